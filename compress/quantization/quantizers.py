"""Quantiser math: plain functions ``(weight, config) -> codes and scales``.

No modules, no hooks: everything here works on a bare ``[N, K]`` tensor
(out_features x in_features) and is testable on a 6x8 matrix.  Scales are
rounded to their storage dtype *before* the codes are computed, so the
fake-quantised weight used in QAT and the packed weight that ``QuantLinear``
dequantises are the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from compress.kernels.formats import int4_num_groups, quantize_activations_int8
from compress.quantization.config import QuantConfig, TernaryConfig

TERNARY_EPS = 1e-5  # BitNet's clamp on the absmean scale


def code_max(bits: int) -> int:
    """The largest code of a ``bits``-wide integer format (15 for int4, 7 for int3)."""
    return (1 << bits) - 1


def sym_offset(bits: int) -> int:
    """The fixed zero point of symmetric ``bits``-wide weights (8 for int4, 4 for int3)."""
    return 1 << (bits - 1)


@dataclass
class Int4Weights:
    """Unpacked int4 (or int3): ``codes`` uint8 ``[N, K]`` in 0..15 (0..7), ``scales``/``zeros`` ``[ceil(K/G), N]``.

    ``zeros`` is None for symmetric weights (offset 8; 4 for int3); dequantised
    ``w[n, k] = (codes[n, k] - z[k // G, n]) * scales[k // G, n]``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: Optional[torch.Tensor]
    group_size: int
    bits: int = 4


@dataclass
class TernaryWeights:
    """Unpacked ternary: ``codes`` int8 ``[N, K]`` in {-1, 0, 1}; ``scale`` ``[1]`` or ``[N]``."""

    codes: torch.Tensor
    scale: torch.Tensor


Quantised = Union[Int4Weights, TernaryWeights]


def _stored(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` rounded to the *nearest* value of the storage dtype (ties to even), as float32.

    Rounding up instead would keep the largest weight of a group just inside the
    grid, but it stretches every step of the group: on weights that already lie
    on a 4-bit grid (SmolLM2 is dequantised from GGUF Q4_1) it flips the codes
    that sit on rounding ties.  A scale rounded down by at most half an fp16 ulp
    leaves the extreme weight at most that far outside, where the clamp of
    :func:`int4_codes` catches it.
    """
    x = x.to(torch.float32).clamp(min=torch.finfo(dtype).tiny)
    return x.to(dtype).to(torch.float32)


# Clip (scale) search: each group's range is shrunk by these factors and the
# one with the least (weighted) squared rounding error is kept.  1.0 is the
# plain min-max range, so the search never does worse on that error.
CLIP_FACTORS = tuple(1.0 - 0.02 * i for i in range(11))  # 1.00, 0.98, ..., 0.80
# Asymmetric ranges: after the joint shrink, search the bottom's and then the top's shrink alone (three times the
# search's work). On SmolLM2-135M g128 GPTQ it lowered news KL 0.154 -> 0.121 (README, issue 18); a module knob so
# benchmarks/gptq_variants.py can measure without it (clip_sides=false).
CLIP_SIDES = True


def effective_group_size(cfg: QuantConfig, in_features: int) -> int:
    """The int4 group size for a weight with ``in_features`` inputs (-1 means all of them)."""
    return in_features if cfg.group_size == -1 else cfg.group_size


# --------------------------------------------------------------------------- ternary

def ternary_scale(w: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """gamma = mean(|W|) or median(|W|) (torch.median: the lower median), per tensor ``[1]`` or per row ``[N]``."""
    a = w.detach().abs().to(torch.float32)
    a = a if cfg.per_channel else a.reshape(1, -1)
    gamma = a.mean(dim=1) if cfg.scale == "absmean" else a.median(dim=1).values
    return _stored(gamma.clamp(min=TERNARY_EPS), cfg.torch_scale_dtype)


def quantize_ternary(w: torch.Tensor, cfg: QuantConfig) -> TernaryWeights:
    """W_t = clip(round(W / gamma), -1, 1) (BitNet b1.58 / Reloaded)."""
    gamma = ternary_scale(w, cfg)
    codes = (w.detach().to(torch.float32) / gamma[:, None]).round().clamp(-1, 1)
    return TernaryWeights(codes=codes.to(torch.int8), scale=gamma.to(cfg.torch_scale_dtype))


# --------------------------------------------------------------------------- int4

def _int4_range_params(
    w: torch.Tensor, symmetric: bool, dtype: torch.dtype, float_zero: bool, shrink: float | torch.Tensor = 1.0,
    shrink_hi: float | torch.Tensor | None = None, bits: int = 4,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Scale and zero point per row of ``w[N, G]`` for its range shrunk by ``shrink`` (see :func:`int4_params`);
    ``shrink_hi``: the top of the range shrunk by this instead (asymmetric; a float or one per row).
    ``bounds``: ``_row_bounds(w, symmetric)`` if the caller has it (the clip search asks 33 times)."""
    lo, hi = _row_bounds(w, symmetric) if bounds is None else bounds
    if symmetric:
        return _stored(hi * shrink / (sym_offset(bits) - 0.5), dtype), None
    if not float_zero:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    lo, hi = lo * shrink, hi * (shrink if shrink_hi is None else shrink_hi)
    scale = _stored((hi - lo) / code_max(bits), dtype)
    zero = -lo / scale
    zero = zero.to(dtype).to(torch.float32) if float_zero else zero.round().clamp(0, code_max(bits))
    return scale, zero


def _row_bounds(w: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's (min, max), or for symmetric weights (-max |w|, max |w|)."""
    if symmetric:
        m = w.abs().amax(dim=1)
        return -m, m
    return w.amin(dim=1), w.amax(dim=1)


def int4_params(
    w: torch.Tensor,
    symmetric: bool,
    dtype: torch.dtype,
    float_zero: bool = False,
    bits: int = 4,
    *,
    clip_search: bool = False,
    weight: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Scale and zero point per row of ``w[N, G]`` (one group), as float32 ``[N]`` (zero None if symmetric).

    Symmetric: s = max|w| / 7.5 with the fixed offset 8, so codes -8..7 cover
    [-max, max] with at most s/2 error (GPTQ's convention).  Asymmetric: the
    range [min(w, 0), max(w, 0)] in 15 steps with the zero point rounded to a
    code, or with ``float_zero`` the exact range [min, max] and a fractional
    zero point (stored in ``dtype``), as GGUF's Q4_1 does.

    ``clip_search``: try the range shrunk by each of ``CLIP_FACTORS`` and keep,
    per row, the one whose rounding error ``sum_k c_k (w - q(w))^2`` is least,
    with ``c = weight`` (``[G]`` per column or ``[N, G]``; GPTQ passes its
    Hessian diagonal, RTN zeros for padding; None: all 1).
    Clipping a few outliers buys a finer step for all the other weights.
    ``bits=3``: the same for int3 (7 steps; symmetric s = max|w| / 3.5, offset 4).
    """
    w = w.detach().to(torch.float32)
    bounds = _row_bounds(w, symmetric)
    best_scale, best_zero = _int4_range_params(w, symmetric, dtype, float_zero, bits=bits, bounds=bounds)
    if not clip_search:
        return best_scale, best_zero
    c = None if weight is None else weight.to(torch.float32)
    buf = torch.empty_like(w)
    best_err = _rounding_error(w, best_scale, best_zero, c, buf, bits)
    sides = CLIP_SIDES and not symmetric
    # The whole range shrunk; then (asymmetric, CLIP_SIDES) its bottom alone, then its top alone, from the best.
    # Only the side passes need each row's chosen shrinks, so only they track them.
    best_lo = best_hi = torch.ones(w.shape[0], device=w.device) if sides else None
    for side in ("both", "lo", "hi") if sides else ("both",):
        lo_from, hi_from = best_lo, best_hi
        for shrink in CLIP_FACTORS[1:] if side == "both" else CLIP_FACTORS:
            lo_f = shrink if side != "hi" else lo_from
            hi_f = shrink if side != "lo" else hi_from
            scale, zero = _int4_range_params(w, symmetric, dtype, float_zero, lo_f, hi_f, bits, bounds)
            err = _rounding_error(w, scale, zero, c, buf, bits)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            if zero is not None:
                best_zero = torch.where(better, zero, best_zero)
            if sides:
                best_lo = torch.where(better, lo_f, best_lo)
                best_hi = torch.where(better, hi_f, best_hi)
    return best_scale, best_zero


def _rounding_error(w: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], c: Optional[torch.Tensor],
                    buf: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Per row ``sum_k c_k (w - q(w))^2`` for ``w[R, G]``, in place in ``buf`` (the clip search's inner loop)."""
    s = scale[:, None]
    torch.div(w, s, out=buf)
    if zero is None:
        buf.round_().clamp_(-sym_offset(bits), code_max(bits) - sym_offset(bits))
    else:
        z = zero[:, None]
        buf.add_(z).round_().clamp_(0, code_max(bits)).sub_(z)
    buf.mul_(s).sub_(w).square_()
    if c is None:
        return buf.sum(dim=1)
    return buf @ c if c.dim() == 1 else buf.mul_(c).sum(dim=1)


def int4_codes(w: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], bits: int = 4) -> torch.Tensor:
    """float codes 0..15 (0..7 for int3) of ``w[N, ...]`` for per-row ``scale``/``zero`` (broadcast over trailing dims)."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    z = sym_offset(bits) if zero is None else zero.reshape(shape)
    return (w.to(torch.float32) / scale.reshape(shape)).add(z).round().clamp(0, code_max(bits))


def int4_dequant(codes: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], bits: int = 4) -> torch.Tensor:
    """Inverse of :func:`int4_codes` (float32), the arithmetic the packed format uses."""
    shape = (-1,) + (1,) * (codes.dim() - 1)
    z = float(sym_offset(bits)) if zero is None else zero.reshape(shape)
    return (codes - z) * scale.reshape(shape)


def num_groups(in_features: int, group_size: int) -> int:
    """Groups along K; the last one may be partial (K = 576 with G = 128 gives 5), as in GPTQ's format."""
    return int4_num_groups(in_features, group_size)


def quantize_int4(w: torch.Tensor, cfg: QuantConfig) -> Int4Weights:
    """Round-to-nearest int4 (int3 with ``cfg.bits == 3``) in groups of ``cfg.group_size`` inputs (each group's
    range searched when ``cfg.clip_search``)."""
    N, K = w.shape
    G = effective_group_size(cfg, K)
    n = num_groups(K, G)
    # A partial last group is padded with copies of its first column, which leaves its range as it is.
    wf = w.detach().to(torch.float32)
    wp = torch.cat([wf, wf[:, -(K % G or G):][:, :1].expand(N, n * G - K)], dim=1)
    flat = wp.reshape(N, n, G).transpose(0, 1).reshape(-1, G)  # [n*N, G]
    pad_weight = None
    if cfg.clip_search and n * G > K:  # the padding copies must not count in the search
        pad_weight = torch.ones(n, N, G, device=wf.device)
        pad_weight[-1, :, K - (n - 1) * G:] = 0
        pad_weight = pad_weight.reshape(-1, G)
    scale, zero = int4_params(flat, cfg.symmetric, cfg.torch_scale_dtype, cfg.zero_point == "float", cfg.bits,
                              clip_search=cfg.clip_search, weight=pad_weight)
    codes = int4_codes(flat, scale, zero, cfg.bits).reshape(n, N, G).transpose(0, 1).reshape(N, n * G)[:, :K]
    dtype = cfg.torch_scale_dtype
    return Int4Weights(
        codes=codes.to(torch.uint8).contiguous(),
        scales=scale.reshape(n, N).to(dtype),
        zeros=None if zero is None else zero.reshape(n, N).to(dtype),
        group_size=G,
        bits=cfg.bits,
    )


# --------------------------------------------------------------------------- shared

def quantize_weight(w: torch.Tensor, cfg: QuantConfig) -> Quantised:
    """Round-to-nearest quantisation of ``w[N, K]`` as ``cfg`` says (GPTQ lives in gptq.py)."""
    return quantize_ternary(w, cfg) if isinstance(cfg, TernaryConfig) else quantize_int4(w, cfg)


def dequantize(q: Quantised) -> torch.Tensor:
    """The float32 weight ``[N, K]`` the quantised values stand for (same arithmetic as the kernels)."""
    if isinstance(q, TernaryWeights):
        return q.codes.to(torch.float32) * q.scale.to(torch.float32).reshape(-1, 1)
    N, K = q.codes.shape
    G = q.group_size
    s = q.scales.to(torch.float32).t().repeat_interleave(G, dim=1)[:, :K]
    z = float(sym_offset(q.bits)) if q.zeros is None else q.zeros.to(torch.float32).t().repeat_interleave(G, dim=1)[:, :K]
    return (q.codes.to(torch.float32) - z) * s


def fake_quantize(w: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """q(w): the dequantised round-to-nearest weight, in ``w``'s dtype, without gradient."""
    with torch.no_grad():
        return dequantize(quantize_weight(w, cfg)).to(w.dtype)


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """8-bit absmax per token (BitNet): ``round(x * 127/max|x|) / (127/max|x|)``, no gradient.

    The arithmetic of ``compress.kernels.formats.quantize_activations_int8`` (and of
    transformers' ``ActQuant``), dequantised by dividing by the same ``inv``.
    """
    with torch.no_grad():
        x_q, inv = quantize_activations_int8(x)
        return (x_q.to(torch.float32) / inv[:, None]).to(x.dtype).reshape(x.shape)
