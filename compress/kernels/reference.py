"""Pure-PyTorch references for every kernel, with the kernels' exact signatures.

They run anywhere (CPU included), compute in float32 whatever the input dtype,
and return ``x.dtype``.  They are the ground truth in the tests and the
fallback of the dispatcher.  Layouts: see :mod:`compress.kernels.formats`.
"""
from __future__ import annotations

from typing import Optional

import torch

from .formats import broadcast_ternary_scale, dequantize_int4, dequantize_ternary

__all__ = ["int4_matmul", "ternary_matmul", "ternary_matmul_a8", "quantize_activations_int8"]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def int4_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    group_size: int,
) -> torch.Tensor:
    """``x[..., K] @ dequantize_int4(...).T`` -> ``[..., N]`` in ``x.dtype``."""
    w = dequantize_int4(qweight, scales, zeros, group_size, dtype=torch.float32)
    y = _flat(x).to(torch.float32) @ w.t()
    return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


def ternary_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x[..., K] @ dequantize_ternary(...).T`` -> ``[..., N]`` in ``x.dtype``."""
    w = dequantize_ternary(qweight, scale, dtype=torch.float32)
    y = _flat(x).to(torch.float32) @ w.t()
    return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58 per-token absmax quantisation of ``x[M, K]``.

    Returns ``(x_q, x_scale)``: int8 ``[M, K]`` and float32 ``[M]`` with
    ``x ~= x_q * x_scale[:, None]``.  Shared by the reference and the Triton
    A8 path so both round identically.
    """
    xf = _flat(x).to(torch.float32)
    inv = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    x_q = (xf * inv).round().clamp(-128, 127).to(torch.int8)
    return x_q, (1.0 / inv).squeeze(-1)


def ternary_matmul_a8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W1.58A8: int8 per-token activations times ternary weights, rescaled.

    ``y[m, n] = x_scale[m] * scale[n] * sum_k x_q[m, k] * (c[n, k] - 1)``.  The
    integer dot is computed exactly in float32 (|partial sums| < 2**24 for
    K < 132k).
    """
    x_q, x_scale = quantize_activations_int8(x)
    w = dequantize_ternary(qweight, torch.ones((), dtype=torch.float32, device=qweight.device))
    s = broadcast_ternary_scale(scale, w.shape[0]).to(torch.float32)
    acc = x_q.to(torch.float32) @ w.t()
    y = acc * x_scale[:, None] * s[None, :]
    return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])
