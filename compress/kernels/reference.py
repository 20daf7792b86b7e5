"""Pure-PyTorch references for every kernel, with the kernels' exact signatures.

They run anywhere (CPU included), compute in float32 whatever the input dtype,
and return ``x.dtype``.  They are the ground truth in the tests and the
fallback of the dispatcher.  Layouts: see :mod:`compress.kernels.formats`.
"""
from __future__ import annotations

from typing import Optional

import torch

from .formats import a8_rescale, a8_weight_scale, dequantize_int4, dequantize_ternary, quantize_activations_int8

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


def ternary_matmul_a8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W1.58A8: int8 per-token activations times ternary weights, rescaled as BitLinear does.

    ``y[m, n] = acc[m, n] / (ws[n] * inv[m])`` with ``acc = sum_k x_q[m, k] * (c[n, k] - 1)``
    and ``ws = 1 / scale`` (see :mod:`compress.kernels.formats`).  The integer dot is
    computed exactly in float32 (|partial sums| < 2**24 for K < 132k).
    """
    x_q, inv = quantize_activations_int8(x)
    w = dequantize_ternary(qweight, torch.ones((), dtype=torch.float32, device=qweight.device))
    acc = x_q.to(torch.float32) @ w.t()
    y = a8_rescale(acc, inv, a8_weight_scale(scale, w.shape[0]).to(acc.device))
    return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])
