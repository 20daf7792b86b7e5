"""Compile every Triton kernel for an H100 (sm_90) without a GPU: ``python -m tests.kernels.sm90_compile``.

The interpreter never runs Triton's compiler, so shape and dtype rules of
the real backend (tl.dot minimum sizes, int8 dots, shared memory) are only
checked here or on a GPU.  Run it with TRITON_INTERPRET unset; it prints one
line per kernel variant and exits non-zero on the first failure.
"""
from __future__ import annotations

import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the kernels must be jitted for the compiler, not the interpreter")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from compress.kernels import triton_int4, triton_ternary  # noqa: E402

H100 = GPUTarget("cuda", 90, 32)
H100_SHARED_BYTES = 227 * 1024
I32 = "i32"


def _compile(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int) -> None:
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=H100,
                            options={"num_warps": num_warps, "num_stages": num_stages})
    shared = kernel.metadata.shared
    assert shared <= H100_SHARED_BYTES, f"{fn.__name__} {constexprs} needs {shared} B of shared memory"
    print(f"ok {fn.__name__:22s} {constexprs} shared={shared}", flush=True)


def variants():
    """(kernel, signature, constexprs, warps, stages) for each launch shape the dispatcher uses."""
    for x in ("*fp16", "*bf16"):
        for bits in (4, 3):  # int4, and int3 (bit planes) through the same kernels
            yield (triton_int4._int4_gemv_kernel,
                   dict(x_ptr=x, qw_ptr="*i32", s_ptr="*fp16", z_ptr="*fp16", y_ptr="*fp32", N=I32, K=I32, G=I32,
                        stride_xm=I32, stride_ym=I32, K_ITERS=I32),
                   dict(HAS_ZEROS=True, BLOCK_N=128, BLOCK_K=128, BITS=bits), 4, 1)
        yield (triton_ternary._ternary_gemv_kernel,
               dict(x_ptr=x, qw_ptr="*i32", s_ptr="*fp16", y_ptr="*fp32", N=I32, K=I32, stride_xm=I32, stride_ym=I32, K_ITERS=I32),
               dict(BLOCK_N=128, BLOCK_K=128), 4, 1)
        for split, bm, y in ((4, 16, "*fp32"), (1, 64, x)):  # split-K decode, GEMM prefill
            dims = dict(M=I32, N=I32, K=I32)
            tiles = dict(SPLIT_K=split, GROUP_M=8, BLOCK_M=bm, BLOCK_N=64, BLOCK_K=64)
            for bits in (4, 3):
                yield (triton_int4._int4_dot_kernel,
                       dict(x_ptr=x, qw_ptr="*i32", s_ptr="*fp16", z_ptr="*fp16", y_ptr=y, **dims, G=I32,
                            stride_xm=I32, stride_ym=I32, K_ITERS=I32),
                       dict(HAS_ZEROS=bits == 3, **tiles, DOT_PRECISION="tf32", BITS=bits), 4, 3)
            yield (triton_ternary._ternary_dot_kernel,
                   dict(x_ptr=x, qw_ptr="*i32", s_ptr="*fp16", y_ptr=y, **dims, stride_xm=I32, stride_ym=I32, K_ITERS=I32),
                   dict(**tiles, DOT_PRECISION="tf32"), 4, 3)
            yield (triton_ternary._ternary_a8_kernel,
                   dict(xq_ptr="*i8", xs_ptr="*fp32", qw_ptr="*i32", s_ptr="*fp16", y_ptr=y, **dims,
                        stride_xm=I32, stride_ym=I32, K_ITERS=I32),
                   tiles, 4, 3)


def main() -> int:
    for fn, signature, constexprs, warps, stages in variants():
        _compile(fn, signature, constexprs, warps, stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
