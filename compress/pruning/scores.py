"""Importance math: plain functions of tensors, no modules, no hooks.

Weights follow ``nn.Linear``: ``[out, in]``.  A group's score sums an
element-wise score over every weight the group owns (rows of the producers,
columns of the consumer):

- magnitude: the L2 norm of the group's weights, ``sqrt(sum W^2)``;
- taylor: first-order Taylor, ``sum |W * dL/dW|`` (LLM-Pruner ``param_first``);
- activation: FLAP's fluctuation, ``Var(X_j) * ||W_out[:, j]||^2`` for each
  input channel j of the consumer (``down``/``o``), summed over the group.

Query heads of kv group g are heads ``g*n_rep .. (g+1)*n_rep - 1``, so their
q rows and o columns are one contiguous block of ``n_rep * head_dim``.
"""
from __future__ import annotations

from typing import Sequence

import torch

Tensor = torch.Tensor


def element_scores(kind: str, weight: Tensor, grad: Tensor | None = None) -> Tensor:
    """Per-element score of one weight matrix (float32): ``W^2`` or ``|W * G|``."""
    w = weight.detach().float()
    if kind == "magnitude":
        return w * w
    if kind == "taylor":
        if grad is None:
            raise ValueError("taylor scores need the weight's gradient")
        return (w * grad.detach().float()).abs()
    raise ValueError(f"no element-wise score for {kind!r}")


def channel_sums(rows: Sequence[Tensor], cols: Sequence[Tensor]) -> Tensor:
    """Sum element scores per channel: over each row of ``rows`` and each column of ``cols``."""
    total = None
    for m in rows:
        total = m.sum(1) if total is None else total + m.sum(1)
    for m in cols:
        total = m.sum(0) if total is None else total + m.sum(0)
    assert total is not None, "a channel needs at least one weight"
    return total


def fold(channel: Tensor, size: int) -> Tensor:
    """Sum consecutive blocks of ``size`` channels (channels -> heads -> kv groups)."""
    return channel.reshape(-1, size).sum(1)


def fluctuation(consumer: Tensor, act_var: Tensor) -> Tensor:
    """FLAP's per-input-channel score ``Var(X_j) * ||W[:, j]||^2`` of a consumer weight."""
    w = consumer.detach().float()
    return act_var.float().to(w.device) * (w * w).sum(0)


def mlp_channel_scores(
    kind: str,
    mlp_in: Sequence[Tensor],
    mlp_out: Tensor,
    *,
    in_grads: Sequence[Tensor] | None = None,
    out_grad: Tensor | None = None,
    act_var: Tensor | None = None,
) -> Tensor:
    """One score per intermediate channel (higher = keep)."""
    if kind == "activation":
        return fluctuation(mlp_out, _need(act_var, "activation"))
    in_grads = in_grads if in_grads is not None else [None] * len(mlp_in)
    rows = [element_scores(kind, w, g) for w, g in zip(mlp_in, in_grads)]
    sums = channel_sums(rows, [element_scores(kind, mlp_out, out_grad)])
    return sums.sqrt() if kind == "magnitude" else sums


def kv_group_scores(
    kind: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    head_dim: int,
    n_rep: int,
    *,
    grads: Sequence[Tensor] | None = None,
    o_act_var: Tensor | None = None,
) -> Tensor:
    """One score per kv group (higher = keep); ``grads`` are those of (q, k, v, o)."""
    if kind == "activation":
        return fold(fluctuation(o, _need(o_act_var, "activation")), n_rep * head_dim)
    gq, gk, gv, go = grads if grads is not None else (None,) * 4
    query = channel_sums([element_scores(kind, q, gq)], [element_scores(kind, o, go)])
    keyval = channel_sums([element_scores(kind, k, gk), element_scores(kind, v, gv)], [])
    sums = fold(query, n_rep * head_dim) + fold(keyval, head_dim)
    return sums.sqrt() if kind == "magnitude" else sums


def _need(x: Tensor | None, kind: str) -> Tensor:
    if x is None:
        raise ValueError(f"{kind} scores need calibration statistics")
    return x


def top_k(scores: Tensor, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, in ascending index order (ties keep the lower index)."""
    order = torch.argsort(scores.float().cpu(), descending=True, stable=True)
    return sorted(order[:k].tolist())
