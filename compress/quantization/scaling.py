"""Activation-aware input scaling before int4 rounding (AWQ, Lin et al. 2024).

A linear layer computes the same output when its input column k is multiplied
by s_k and whatever produces that input divides it by s_k: a pre-norm's
weight in front of q/k/v or the MLP inputs, the up projection's rows in front
of a gated MLP's down projection, v's rows in front of o (when every head has
its own kv head).  The float model is unchanged, but int4 rounds each group of
columns with one step, so columns scaled up are rounded finer relative to
their size: scaling up the columns that see large inputs moves rounding error
to where it matters least.

Per layer and per such pair, ``s = mean|x| ** alpha`` (normalised so that
``max(s) * min(s) = 1``), with alpha from a grid of ``ALPHAS``; the one whose
round-to-nearest weights give the least output error on the calibration
inputs, ``sum_n (w_n - q_n) H (w_n - q_n)^T`` with ``q = Q(w * s) / s`` and
``H`` the inputs' Hessian (GPTQ's ``accumulate_hessian``), is folded in (alpha = 0 is no change, so the search never
makes that error larger).  GPTQ then quantises the scaled weights.

Plain functions: ``search_scale`` is the math on one pair's tensors,
``scale_inputs`` walks the layers of a supported model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.arch import Adapter
from compress.layer_calls import capture_layer_calls
from compress.quantization.config import QuantConfig
from compress.quantization.gptq import accumulate_hessian
from compress.quantization.quantizers import dequantize, quantize_int4

ALPHAS = tuple(i / 20 for i in range(20))  # 0.00, 0.05, ..., 0.95 (AWQ's grid)


@dataclass
class ScalePair:
    """Inputs of ``consumers`` (linear layers fed one tensor) come from ``producer``, which can divide them by s.

    ``kind``: "norm" (an RMSNorm / LayerNorm weight, ``offset`` added to it in the forward:
    1.0 for Gemma's ``x * (1 + w)``), or "linear" (the producer's output rows).
    """

    name: str
    producer: nn.Module
    consumers: list[nn.Linear]
    kind: str
    offset: float = 0.0


def search_scale(weights: list[torch.Tensor], H: torch.Tensor, x_abs_mean: torch.Tensor,
                 cfg: QuantConfig) -> tuple[torch.Tensor, float, float, float]:
    """The input scale ``s[K]`` for weights ``[N_i, K]`` fed inputs with Gram matrix ``H[K, K]`` and mean |x|.

    Returns (s, alpha, error with s, error without).  The search rounds to nearest
    without the clip search (speed); the error is summed over the weights.
    """
    W = torch.cat([w.detach().to(torch.float32) for w in weights])
    H = H.to(torch.float32)
    rtn = replace(cfg, gptq=False, clip_search=False)
    x = x_abs_mean.to(torch.float32).clamp(min=1e-4)

    def error(s: torch.Tensor) -> float:
        D = W - dequantize(quantize_int4(W * s, rtn)) / s
        return float(((D @ H) * D).sum())

    ones = torch.ones_like(x)
    base = error(ones)
    best = (ones, 0.0, base)
    for alpha in ALPHAS[1:]:
        s = x.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = error(s)
        if err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1], best[2], base


@torch.no_grad()
def apply_scale(pair: ScalePair, s: torch.Tensor) -> None:
    """Fold ``s`` in: consumers' input columns times s, the producer's output divided by s (exactly the same model
    up to rounding)."""
    for lin in pair.consumers:
        w = lin.weight
        w.copy_((w.to(torch.float32) * s).to(w.dtype))
    p = pair.producer
    w = p.weight
    if pair.kind == "norm":  # the norm's output is x_normed * (w + offset)
        w.copy_(((w.to(torch.float32) + pair.offset) / s - pair.offset).to(w.dtype))
    else:  # the producer's output rows
        w.copy_((w.to(torch.float32) / s[:, None]).to(w.dtype))
    if getattr(p, "bias", None) is not None:
        p.bias.copy_((p.bias.to(torch.float32) / s).to(p.bias.dtype))


def scale_pairs(adapter: Adapter, i: int) -> list[ScalePair]:
    """Layer ``i``'s (producer, consumers) pairs that can take an input scale, as its family's spec says."""
    parts, spec = adapter.layer(i), adapter.spec
    layer = parts.module
    pairs = []
    if spec.attn_norm is not None:
        pairs.append(ScalePair("qkv", layer.get_submodule(spec.attn_norm), [parts.q, parts.k, parts.v], "norm",
                               spec.norm_offset))
    if parts.v.out_features == parts.o.in_features and parts.num_kv_heads == parts.num_heads:
        pairs.append(ScalePair("o", parts.v, [parts.o], "linear"))
    if spec.mlp_norm is not None:
        pairs.append(ScalePair("mlp_in", layer.get_submodule(spec.mlp_norm), list(parts.mlp_in), "norm",
                               spec.norm_offset))
    if len(parts.mlp_in) == 2:  # gated: act(gate x) * (up x), linear in up's output
        pairs.append(ScalePair("mlp_out", parts.mlp_in[1], [parts.mlp_out], "linear"))
    return pairs


@torch.no_grad()
def scale_inputs(adapter: Adapter, data: torch.Tensor, cfg: QuantConfig, *, batch_size: int = 4,
                 progress: bool = True) -> list[dict]:
    """Search and fold an input scale into every pair of every layer (``scale_pairs``), on the calibration
    token ids ``data[n, seq_len]``; returns one record per pair (layer, name, alpha, errors)."""
    device = next(adapter.model.parameters()).device
    batches = list(data.to(device).split(batch_size))
    hidden, calls = capture_layer_calls(adapter, batches)
    records = []
    for i in tqdm(range(adapter.num_layers), desc="input scales", unit="layer", disable=not progress):
        layer = adapter.layers[i]
        pairs = scale_pairs(adapter, i)
        stats: dict[str, list] = {}

        def hook(pair: ScalePair):
            K = pair.consumers[0].in_features

            def pre_hook(module: nn.Module, args: tuple) -> None:
                x = args[0].detach().reshape(-1, K).to(torch.float32)
                st = stats.setdefault(pair.name, [torch.zeros(K, K, device=x.device), 0, torch.zeros(K, device=x.device)])
                st[1] = accumulate_hessian(st[0], st[1], x)  # GPTQ's running 2/n X^T X
                st[2].add_(x.abs().sum(dim=0))

            return pre_hook

        handles = [p.consumers[0].register_forward_pre_hook(hook(p)) for p in pairs]
        try:
            outs = [call.run(layer, h) for h, call in zip(hidden, calls[i])]
        finally:
            for h in handles:
                h.remove()
        for pair in pairs:
            if pair.name not in stats:
                continue
            H, n, xsum = stats.pop(pair.name)
            s, alpha, err, base = search_scale([c.weight for c in pair.consumers], H, xsum / n, cfg)
            if alpha > 0:
                apply_scale(pair, s)
            records.append({"layer": i, "pair": pair.name, "alpha": alpha, "error": err, "error_unscaled": base})
        # the scaled layer computes the same outputs; take them from the pass that recorded the inputs
        for h, out in zip(hidden, outs):
            h.copy_(out)
    return records
