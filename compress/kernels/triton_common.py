"""Triton helpers shared by the int4 and ternary kernels.

The kernels use only Triton builtins plus the helpers here, never the
``@triton.jit`` helpers of ``triton.language.standard`` (``tl.sum``,
``tl.zeros``, ``tl.cdiv``).  Those are jitted when triton is first imported,
so under ``TRITON_INTERPRET=1`` they only work if the variable was set before
that import, which a test session that loads transformers first cannot
promise.  ``tl.reduce`` with triton's own sum combiner is exactly what
``tl.sum`` does (for fp32/int32 inputs), and the interpreter runs it as one
numpy sum.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@triton.jit
def tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program in grouped order along axis 0.

    GROUP_M consecutive programs share one weight column tile, so it is read
    from L2 rather than HBM by the programs after the first.
    """
    pid = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_rows
    pid_n = (pid % in_group) // group_rows
    return pid_m, pid_n


@triton.jit
def fsum(x, AXIS: tl.constexpr):
    """``tl.sum(x, axis=AXIS)`` for fp32 or int32 ``x`` (see the module docstring)."""
    return tl.reduce(x, AXIS, tl.standard._sum_combine)


def k_split(block_k: int, split_k: int, K: int) -> tuple[int, int]:
    """(K-blocks per program, programs along K); drops programs that would get no K."""
    iters = cdiv(K, max(1, split_k) * block_k)
    return iters, cdiv(K, iters * block_k)


def output_buffer(x2: torch.Tensor, N: int, split: int, out: Optional[torch.Tensor]) -> torch.Tensor:
    """Where the kernel writes ``[M, N]``.

    Split-K partial sums meet in a zeroed fp32 buffer; a single pass stores
    straight into ``out`` (or a fresh tensor in x's dtype).
    """
    M = x2.shape[0]
    if out is not None and (out.dtype != x2.dtype or out.numel() != M * N or not out.is_contiguous()):
        raise ValueError(
            f"out must be a contiguous {x2.dtype} tensor with {M}x{N} elements, got {out.dtype} "
            f"of shape {list(out.shape)}; allocate it like x.new_empty(*x.shape[:-1], N)."
        )
    if split > 1:
        return torch.zeros((M, N), device=x2.device, dtype=torch.float32)
    if out is not None:
        return out.view(M, N)
    return torch.empty((M, N), device=x2.device, dtype=x2.dtype)


def finish(y: torch.Tensor, x: torch.Tensor, N: int, out: Optional[torch.Tensor]) -> torch.Tensor:
    """Cast/copy the kernel's ``[M, N]`` result into ``out`` or a tensor shaped ``[..., N]``."""
    shape = (*x.shape[:-1], N)
    if out is None:
        return y.to(x.dtype).reshape(shape)
    if y.data_ptr() != out.data_ptr():
        out.view(y.shape).copy_(y)
    return out.view(shape)
