"""Pure-PyTorch references for every kernel, with the kernels' exact signatures.

They run anywhere (CPU included), compute in float32 whatever the input dtype,
and return ``x.dtype``.  They are the ground truth in the tests and the
fallback of the dispatcher.  Layouts: see :mod:`compress.kernels.formats`.
"""
from __future__ import annotations

from typing import Optional

import torch

from .formats import Int4Format, TernaryA8Format, TernaryFormat, quantize_activations_int8

__all__ = ["int4_matmul", "ternary_matmul", "ternary_matmul_a8", "quantize_activations_int8"]


def int4_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    group_size: int,
) -> torch.Tensor:
    """``x[..., K] @ dequantize_int4(...).T`` -> ``[..., N]`` in ``x.dtype``."""
    return Int4Format.reference(x, qweight, scales, zeros, group_size)


def ternary_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x[..., K] @ dequantize_ternary(...).T`` -> ``[..., N]`` in ``x.dtype``."""
    return TernaryFormat.reference(x, qweight, scale, None, 0)


def ternary_matmul_a8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W1.58A8: int8 per-token activations times ternary weights, rescaled as BitLinear does.

    ``y[m, n] = acc[m, n] / (ws[n] * inv[m])`` with ``acc = sum_k x_q[m, k] * (c[n, k] - 1)``
    and ``ws = 1 / scale`` (see :mod:`compress.kernels.formats`).  The integer dot is
    computed exactly in float32 (|partial sums| < 2**24 for K < 132k).
    """
    return TernaryA8Format.reference(x, qweight, scale, None, 0)
