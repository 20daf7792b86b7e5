"""Triton W4A16 and W3A16 kernels for the int4 and int3 layouts of :mod:`compress.kernels.formats`.

Three launches over one packed tensor (GemLite's design, KERNELS.md section 8):

* ``int4_gemv``   M = 1 (any M works): split-K GEMV, no tensor cores; each
  program reduces a ``[BLOCK_K, BLOCK_N]`` tile in fp32 and atomically adds it.
* ``int4_splitk`` 2 <= M <= 64: ``tl.dot`` with BLOCK_M = 16 and K split across
  programs, fp32 atomics.
* ``int4_gemm``   M > 64: tiled ``tl.dot`` GEMM, grouped program order, direct store.

Scales and zero points are applied per K-block after the partial dot,
``s_g * (sum x*q - z_g * sum x)``, so the inner loop is shift, mask, convert
and multiply-add only.  A block never straddles two groups: block_k is a power
of two no larger than G (tuning.fit_config), so blocks tile each group, and
the group of a block is ``k0 // G``.  A partial last group (G does not divide
K) needs nothing more: its blocks are cut at K by the same mask as any K tail,
and its scale row ``ceil(K/G) - 1`` is the last one.

int3 runs the same kernels with ``BITS=3``: a code is rebuilt from its three
bit planes (words ``3 (k // 32) + b``, bit ``k % 32``) and the symmetric offset
is 4; everything after the code is the int4 path.

Importing this module runs ``@triton.jit``, which reads ``TRITON_INTERPRET``:
set it before the first import when testing on the CPU.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .formats import check_int4
from .triton_common import cdiv, finish, fsum, k_split, output_buffer, tile_ids
from .tuning import KernelConfig, fit_config, get_config, kernel_for

__all__ = ["int4_gemv", "int4_splitk", "int4_gemm", "int4_matmul", "int3_gemv", "int3_splitk", "int3_gemm"]


@triton.jit
def _codes(qw_ptr, offs_k, offs_n, mask, N, BITS: tl.constexpr):
    """The ``[BLOCK_K, BLOCK_N]`` int32 codes of rows ``offs_k`` (int4 nibbles, or int3 from three bit planes)."""
    if BITS == 4:
        # Row k of the tile reads word k // 8 (repeated rows hit L1) and shifts out nibble k % 8.
        words = tl.load(qw_ptr + (offs_k // 8)[:, None] * N + offs_n[None, :], mask=mask, other=0)
        q = (words >> ((offs_k % 8) * 4)[:, None]) & 0xF
    else:
        plane = ((offs_k // 32) * 3)[:, None] * N + offs_n[None, :]
        bit = (offs_k % 32)[:, None]
        q = (tl.load(qw_ptr + plane, mask=mask, other=0) >> bit) & 1
        q |= ((tl.load(qw_ptr + plane + N, mask=mask, other=0) >> bit) & 1) << 1
        q |= ((tl.load(qw_ptr + plane + 2 * N, mask=mask, other=0) >> bit) & 1) << 2
    return q


@triton.jit
def _int4_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr,
    N, K, G, stride_xm, stride_ym, K_ITERS,
    HAS_ZEROS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BITS: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.full((BLOCK_N,), 0, tl.float32)
    for i in range(0, K_ITERS):
        k0 = (pid_k * K_ITERS + i) * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + pid_m * stride_xm + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        q = _codes(qw_ptr, offs_k, offs_n, mask_k[:, None] & mask_n[None, :], N, BITS).to(tl.float32)
        dot = fsum(x[:, None] * q, 0)
        x_sum = fsum(x, 0)
        # Blocks past K (last split) have x = 0 and add nothing; clamp their group row in bounds.
        g = tl.minimum(k0, K - 1) // G
        s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            acc += s * (dot - z * x_sum)
        else:
            acc += s * (dot - (1 << (BITS - 1)) * x_sum)
    tl.atomic_add(y_ptr + pid_m * stride_ym + offs_n, acc, mask=mask_n, sem="relaxed")


@triton.jit
def _int4_dot_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr,
    M, N, K, G, stride_xm, stride_ym, K_ITERS,
    HAS_ZEROS: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BITS: tl.constexpr,
):
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.float32)
    for i in range(0, K_ITERS):
        k0 = (pid_k * K_ITERS + i) * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        # Codes 0..15 are exact in fp16/bf16, so the dot runs on tensor cores in x's dtype.
        q = _codes(qw_ptr, offs_k, offs_n, mask_k[:, None] & mask_n[None, :], N, BITS).to(x.dtype)
        part = tl.dot(x, q, input_precision=DOT_PRECISION)
        x_sum = fsum(x.to(tl.float32), 1)
        # Blocks past K (last split) have x = 0 and add nothing; clamp their group row in bounds.
        g = tl.minimum(k0, K - 1) // G
        s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            acc += s[None, :] * (part - x_sum[:, None] * z[None, :])
        else:
            acc += s[None, :] * (part - (1 << (BITS - 1)) * x_sum[:, None])
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptrs, acc, mask=mask, sem="relaxed")


def _prepare(x: torch.Tensor, qweight, scales, zeros, group_size, bits: int = 4):
    N, K, G = check_int4(qweight, scales, zeros, group_size, bits=bits)
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features but the int{bits} weight expects K={K}; check the layer's "
                         f"in_features.")
    x2 = x.reshape(-1, K).contiguous()
    qweight, scales = qweight.contiguous(), scales.contiguous()
    zeros = zeros.contiguous() if zeros is not None else scales  # dummy pointer, never read
    return x2, qweight, scales, zeros, N, K, G


def int4_gemv(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor], group_size: int,
    *, config: Optional[KernelConfig] = None, out: Optional[torch.Tensor] = None, bits: int = 4,
) -> torch.Tensor:
    """Split-K GEMV (meant for M = 1; one program row per token otherwise)."""
    x2, qw, s, z, N, K, G = _prepare(x, qweight, scales, zeros, group_size, bits)
    M = x2.shape[0]
    kernel = f"int{bits}_gemv"
    cfg = fit_config(config, kernel, M, N, K, G) if config else get_config(kernel, M, N, K, G, x.device)
    iters, split = k_split(cfg.block_k, cfg.split_k, K)
    y = output_buffer(x2, N, 2, out)  # always accumulates with atomics
    _int4_gemv_kernel[(cdiv(N, cfg.block_n), split, M)](
        x2, qw, s, z, y, N, K, G, x2.stride(0), y.stride(0), iters,
        HAS_ZEROS=zeros is not None, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BITS=bits,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return finish(y, x, N, out)


def _dot(kernel: str, x, qweight, scales, zeros, group_size, config, out, bits: int = 4) -> torch.Tensor:
    x2, qw, s, z, N, K, G = _prepare(x, qweight, scales, zeros, group_size, bits)
    M = x2.shape[0]
    cfg = fit_config(config, kernel, M, N, K, G) if config else get_config(kernel, M, N, K, G, x.device)
    iters, split = k_split(cfg.block_k, cfg.split_k, K)
    y = output_buffer(x2, N, split, out)
    _int4_dot_kernel[(cdiv(M, cfg.block_m) * cdiv(N, cfg.block_n), split)](
        x2, qw, s, z, y, M, N, K, G, x2.stride(0), y.stride(0), iters,
        HAS_ZEROS=zeros is not None, SPLIT_K=split, GROUP_M=cfg.group_m,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        DOT_PRECISION="ieee" if x2.dtype == torch.float32 else "tf32",  # fp32 inputs: no TF32 rounding
        BITS=bits, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return finish(y, x, N, out)


def int4_splitk(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor], group_size: int,
    *, config: Optional[KernelConfig] = None, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Split-K ``tl.dot`` kernel for small batches (2 <= M <= 64)."""
    return _dot("int4_splitk", x, qweight, scales, zeros, group_size, config, out)


def int4_gemm(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor], group_size: int,
    *, config: Optional[KernelConfig] = None, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Tiled GEMM for prefill (M > 64); a ``config`` with split_k > 1 is honoured."""
    return _dot("int4_gemm", x, qweight, scales, zeros, group_size, config, out)


def int4_matmul(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor], group_size: int,
) -> torch.Tensor:
    """Same signature as ``reference.int4_matmul``; picks GEMV / split-K / GEMM by batch size."""
    M = x.numel() // max(1, x.shape[-1])
    return globals()[kernel_for("int4", M)](x, qweight, scales, zeros, group_size)


def int3_gemv(x, qweight, scales, zeros, group_size, *, config=None, out=None) -> torch.Tensor:
    """:func:`int4_gemv` for the int3 layout (3-bit codes as bit planes, offset 4)."""
    return int4_gemv(x, qweight, scales, zeros, group_size, config=config, out=out, bits=3)


def int3_splitk(x, qweight, scales, zeros, group_size, *, config=None, out=None) -> torch.Tensor:
    """:func:`int4_splitk` for the int3 layout."""
    return _dot("int3_splitk", x, qweight, scales, zeros, group_size, config, out, bits=3)


def int3_gemm(x, qweight, scales, zeros, group_size, *, config=None, out=None) -> torch.Tensor:
    """:func:`int4_gemm` for the int3 layout."""
    return _dot("int3_gemm", x, qweight, scales, zeros, group_size, config, out, bits=3)
