"""Triton kernels for the ternary (BitNet b1.58) layout of :mod:`compress.kernels.formats`.

W1.58A16 (float activations), same three launches as the int4 file:
``ternary_gemv`` (M = 1, split-K, fp32 atomics), ``ternary_splitk``
(2 <= M <= 64, ``tl.dot``) and ``ternary_gemm`` (M > 64).  The zero point of
the codes ``c = w + 1`` is handled algebraically, ``sum x*(c-1) = sum x*c - sum x``,
so the inner loop never subtracts per weight; the per-channel scale is applied
once in the epilogue.

W1.58A8: ``ternary_a8`` quantises activations per token to int8 (the same
helper as the reference), decodes weights to int8 {-1, 0, 1} and runs an
int8 ``tl.dot`` into int32, rescaling at the end as transformers' BitLinear
does: ``acc / (ws[n] * inv[m])`` with an IEEE division (``tl.math.div_rn``),
``ws = 1 / scale`` from ``formats.a8_weight_scale``.  With ``split_k == 1`` this
is bit-identical to the reference; split-K divides each partial sum.
It takes ``split_k`` from its config, so the same kernel serves decode and prefill.

Importing this module runs ``@triton.jit``, which reads ``TRITON_INTERPRET``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .formats import a8_weight_scale, broadcast_ternary_scale, check_ternary, quantize_activations_int8
from .triton_common import cdiv, finish, fsum, k_split, output_buffer, tile_ids
from .tuning import KernelConfig, fit_config, get_config, kernel_for

__all__ = ["ternary_gemv", "ternary_splitk", "ternary_gemm", "ternary_matmul", "ternary_a8", "ternary_matmul_a8"]


@triton.jit
def _ternary_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, y_ptr,
    N, K, stride_xm, stride_ym, K_ITERS,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.full((BLOCK_N,), 0, tl.float32)
    for i in range(0, K_ITERS):
        offs_k = (pid_k * K_ITERS + i) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + pid_m * stride_xm + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        words = tl.load(qw_ptr + (offs_k // 16)[:, None] * N + offs_n[None, :],
                        mask=mask_k[:, None] & mask_n[None, :], other=0)
        c = ((words >> ((offs_k % 16) * 2)[:, None]) & 0x3).to(tl.float32)
        acc += fsum(x[:, None] * c, 0) - fsum(x, 0)
    s = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.atomic_add(y_ptr + pid_m * stride_ym + offs_n, acc * s, mask=mask_n, sem="relaxed")


@triton.jit
def _ternary_dot_kernel(
    x_ptr, qw_ptr, s_ptr, y_ptr,
    M, N, K, stride_xm, stride_ym, K_ITERS,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.float32)
    x_sum = tl.full((BLOCK_M,), 0, tl.float32)
    for i in range(0, K_ITERS):
        offs_k = (pid_k * K_ITERS + i) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        words = tl.load(qw_ptr + (offs_k // 16)[:, None] * N + offs_n[None, :],
                        mask=mask_k[:, None] & mask_n[None, :], other=0)
        c = ((words >> ((offs_k % 16) * 2)[:, None]) & 0x3).to(x.dtype)
        acc = tl.dot(x, c, acc, input_precision=DOT_PRECISION)
        x_sum += fsum(x.to(tl.float32), 1)
    s = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    out = (acc - x_sum[:, None]) * s[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptrs, out, mask=mask, sem="relaxed")


@triton.jit
def _ternary_a8_kernel(
    xq_ptr, xs_ptr, qw_ptr, s_ptr, y_ptr,
    M, N, K, stride_xm, stride_ym, K_ITERS,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)
    for i in range(0, K_ITERS):
        offs_k = (pid_k * K_ITERS + i) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        xq = tl.load(xq_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                     mask=mask_m[:, None] & mask_k[None, :], other=0)
        words = tl.load(qw_ptr + (offs_k // 16)[:, None] * N + offs_n[None, :],
                        mask=mask_k[:, None] & mask_n[None, :], other=0)
        # Masked rows decode to -1, harmless because their activations are 0.
        w = (((words >> ((offs_k % 16) * 2)[:, None]) & 0x3) - 1).to(tl.int8)
        acc = tl.dot(xq, w, acc)
    inv = tl.load(xs_ptr + offs_m, mask=mask_m, other=1.0)
    ws = tl.load(s_ptr + offs_n, mask=mask_n, other=1.0).to(tl.float32)
    # BitLinear's order: one product of the two scales, then an IEEE (round-to-nearest) division.
    out = tl.math.div_rn(acc.to(tl.float32), ws[None, :] * inv[:, None])
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptrs, out, mask=mask, sem="relaxed")


def _prepare(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor):
    N, K = check_ternary(qweight, scale)
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features but the ternary weight expects K={K}; check the layer's in_features.")
    return x.reshape(-1, K).contiguous(), qweight.contiguous(), broadcast_ternary_scale(scale, N), N, K


def _config(kernel: str, config: Optional[KernelConfig], M: int, N: int, K: int, device) -> KernelConfig:
    return fit_config(config, kernel, M, N, K) if config else get_config(kernel, M, N, K, 0, device)


def ternary_gemv(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
    *, config: Optional[KernelConfig] = None, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Split-K GEMV (meant for M = 1; one program row per token otherwise)."""
    x2, qw, s, N, K = _prepare(x, qweight, scale)
    M = x2.shape[0]
    cfg = _config("ternary_gemv", config, M, N, K, x.device)
    iters, split = k_split(cfg.block_k, cfg.split_k, K)
    y = output_buffer(x2, N, 2, out)  # always accumulates with atomics
    _ternary_gemv_kernel[(cdiv(N, cfg.block_n), split, M)](
        x2, qw, s, y, N, K, x2.stride(0), y.stride(0), iters,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return finish(y, x, N, out)


def _dot(kernel: str, x, qweight, scale, config, out) -> torch.Tensor:
    x2, qw, s, N, K = _prepare(x, qweight, scale)
    M = x2.shape[0]
    cfg = _config(kernel, config, M, N, K, x.device)
    iters, split = k_split(cfg.block_k, cfg.split_k, K)
    y = output_buffer(x2, N, split, out)
    _ternary_dot_kernel[(cdiv(M, cfg.block_m) * cdiv(N, cfg.block_n), split)](
        x2, qw, s, y, M, N, K, x2.stride(0), y.stride(0), iters,
        SPLIT_K=split, GROUP_M=cfg.group_m, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        DOT_PRECISION="ieee" if x2.dtype == torch.float32 else "tf32",  # fp32 inputs: no TF32 rounding
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return finish(y, x, N, out)


def ternary_splitk(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
    *, config: Optional[KernelConfig] = None, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Split-K ``tl.dot`` kernel for small batches (2 <= M <= 64)."""
    return _dot("ternary_splitk", x, qweight, scale, config, out)


def ternary_gemm(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
    *, config: Optional[KernelConfig] = None, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Tiled GEMM for prefill (M > 64)."""
    return _dot("ternary_gemm", x, qweight, scale, config, out)


def ternary_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Same signature as ``reference.ternary_matmul``; picks GEMV / split-K / GEMM by batch size."""
    M = x.numel() // max(1, x.shape[-1])
    return globals()[kernel_for("ternary", M)](x, qweight, scale)


def ternary_a8(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
    *, config: Optional[KernelConfig] = None, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """W1.58A8: per-token int8 activations, int8 ``tl.dot``, rescale (any M)."""
    x2, qw, s, N, K = _prepare(x, qweight, scale)
    M = x2.shape[0]
    x_q, inv = quantize_activations_int8(x2)
    ws = a8_weight_scale(s, N).to(x2.device)
    cfg = _config("ternary_a8", config, M, N, K, x.device)
    iters, split = k_split(cfg.block_k, cfg.split_k, K)
    y = output_buffer(x2, N, split, out)
    _ternary_a8_kernel[(cdiv(M, cfg.block_m) * cdiv(N, cfg.block_n), split)](
        x_q, inv, qw, ws, y, M, N, K, x_q.stride(0), y.stride(0), iters,
        SPLIT_K=split, GROUP_M=cfg.group_m, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return finish(y, x, N, out)


def ternary_matmul_a8(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Same signature as ``reference.ternary_matmul_a8``."""
    return ternary_a8(x, qweight, scale)
