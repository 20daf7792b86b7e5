"""Calibration passes: hooks that gather what the scores need, and nothing else.

One pass over calibration tokens collects, on request:

- each layer's mean cosine similarity between its input and output hidden
  states (layer importance);
- per-channel mean/variance of the inputs of ``o`` and ``mlp_out``
  (activation scores);
- gradients of the calibration loss (labels = inputs) with respect to every
  projection weight (Taylor scores).  Only those weights require grad during
  the pass, so embeddings and norms cost no gradient memory.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from compress.arch import Adapter
from compress.errors import CompressError


@dataclass
class LayerGrads:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    mlp_in: list[torch.Tensor]
    mlp_out: torch.Tensor


@dataclass
class Calibration:
    """What one pass measured; ``None`` for what was not asked."""

    tokens: int
    cosine: torch.Tensor | None = None  # [layers] mean cos(h_in, h_out)
    mlp_var: list[torch.Tensor] | None = None  # per layer, [mlp width]
    o_var: list[torch.Tensor] | None = None  # per layer, [heads * head_dim]
    grads: list[LayerGrads] | None = field(default=None, repr=False)


def calibration_rows(data: Any) -> torch.Tensor:
    """Calibration token ids as one tensor: a TextSplits' calibration split, a list of rows, or a tensor [n, seq_len]."""
    data = getattr(data, "calibration", data)
    if isinstance(data, (list, tuple)):
        data = torch.stack([torch.as_tensor(x) for x in data]) if data else torch.empty(0, 0, dtype=torch.long)
    if not isinstance(data, torch.Tensor) or data.dtype.is_floating_point or data.dtype == torch.bool or data.ndim != 2:
        raise CompressError("Calibration data must be integer token ids shaped [n, seq_len] (or a TextSplits).")
    return data


def check_in_vocabulary(ids: torch.Tensor, vocab: int) -> None:
    if int(ids.max()) >= vocab or int(ids.min()) < 0:
        raise CompressError(f"Calibration token ids must lie in [0, {vocab}), the model's vocabulary.")


def sample_windows(data: torch.Tensor, n: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random windows of ``seq_len`` tokens from distinct rows of ``data`` (all rows if fewer)."""
    rows = torch.randperm(data.shape[0], generator=generator)[:n]
    starts = torch.randint(0, data.shape[1] - seq_len + 1, (len(rows),), generator=generator)
    return torch.stack([data[r, s : s + seq_len] for r, s in zip(rows.tolist(), starts.tolist())])


class _Moments:
    """Running per-channel sum and sum of squares, in float64 so long runs don't drift."""

    def __init__(self) -> None:
        self.n = 0
        self.s: torch.Tensor | None = None
        self.sq: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        s, sq = x.sum(0), (x * x).sum(0)
        self.s = s if self.s is None else self.s + s
        self.sq = sq if self.sq is None else self.sq + sq
        self.n += x.shape[0]

    def var(self) -> torch.Tensor:
        assert self.s is not None and self.sq is not None
        mean = self.s / self.n
        return (self.sq / self.n - mean * mean).clamp_min(0).float()


def calibrate(
    model: nn.Module,
    adapter: Adapter,
    ids: torch.Tensor,
    *,
    cosine: bool,
    activations: bool,
    gradients: bool,
    batch_size: int,
    progress: bool = False,
) -> Calibration:
    """Run ``ids`` [n, seq_len] through ``model`` once, collecting what is asked."""
    n_layers = adapter.num_layers
    parts = [adapter.layer(i) for i in range(n_layers)]
    cos_sums: list[list[torch.Tensor]] = [[] for _ in parts]
    cos_n = [0] * n_layers
    mlp_m = [_Moments() for _ in parts]
    o_m = [_Moments() for _ in parts]
    weights = [lin.weight for p in parts for lin in (p.q, p.k, p.v, p.o, *p.mlp_in, p.mlp_out)]
    device = adapter.embed.weight.device
    was_training = model.training
    requires = {id(p): p.requires_grad for p in model.parameters()}
    with ExitStack() as stack:
        stack.callback(model.train, was_training)
        model.eval()
        if cosine:
            for i, p in enumerate(parts):
                hook = _cosine_hook(i, cos_sums, cos_n)
                stack.callback(p.module.register_forward_hook(hook, with_kwargs=True).remove)
        if activations:
            for p, mm, om in zip(parts, mlp_m, o_m):
                stack.callback(p.mlp_out.register_forward_pre_hook(lambda _m, a, acc=mm: acc.add(a[0])).remove)
                stack.callback(p.o.register_forward_pre_hook(lambda _m, a, acc=om: acc.add(a[0])).remove)
        if gradients:
            stack.callback(_restore_grad_flags, model, requires)
            for prm in model.parameters():
                prm.requires_grad_(False)
            for w in weights:
                w.requires_grad_(True)
                w.grad = None
        stack.enter_context(torch.set_grad_enabled(gradients))
        batches = ids.split(batch_size)
        for batch in tqdm(batches, desc="calibration", leave=False, disable=not progress or len(batches) < 2):
            batch = batch.to(device)
            kwargs: dict[str, Any] = {"use_cache": False} if adapter.spec.causal else {}
            if gradients:
                out = model(input_ids=batch, labels=batch, **kwargs)
                if getattr(out, "loss", None) is None:
                    raise CompressError(
                        f"{type(model).__name__} returns no loss, so Taylor importance cannot be computed; "
                        "use importance='magnitude' or 'activation'."
                    )
                out.loss.backward()
            else:
                # Hooks only need the layers: skip the LM head and its vocabulary-sized logits.
                getattr(model, "base_model", model)(input_ids=batch, **kwargs)
        grads = None
        if gradients:
            grads = [_take_grads(p) for p in parts]
    return Calibration(
        tokens=ids.numel(),
        cosine=_means(cos_sums, cos_n) if cosine else None,
        mlp_var=[m.var() for m in mlp_m] if activations else None,
        o_var=[m.var() for m in o_m] if activations else None,
        grads=grads,
    )


def _cosine_hook(i: int, sums: list[list[torch.Tensor]], counts: list[int]):
    def hook(_module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        h_in = args[0] if args else kwargs["hidden_states"]
        h_out = out[0] if isinstance(out, (tuple, list)) else out
        cos = F.cosine_similarity(h_in.detach().float(), h_out.detach().float(), dim=-1)
        sums[i].append(cos.sum().double())  # stays on the device: no sync per layer
        counts[i] += cos.numel()

    return hook


def _means(sums: list[list[torch.Tensor]], counts: list[int]) -> torch.Tensor:
    return torch.tensor([float(torch.stack(s).sum()) / max(n, 1) if s else 0.0 for s, n in zip(sums, counts)])


def _take_grads(p: Any) -> LayerGrads:
    def take(lin: nn.Linear) -> torch.Tensor:
        g = lin.weight.grad
        lin.weight.grad = None
        # A projection the loss never reached (should not happen) scores zero.
        return g if g is not None else torch.zeros_like(lin.weight)

    return LayerGrads(take(p.q), take(p.k), take(p.v), take(p.o), [take(m) for m in p.mlp_in], take(p.mlp_out))


def _restore_grad_flags(model: nn.Module, requires: dict[int, bool]) -> None:
    for prm in model.parameters():
        prm.requires_grad_(requires.get(id(prm), True))
        prm.grad = None
