"""One entry point for every packed matmul: ``quant_matmul``.

It picks the kernel from the format and the batch size M (rows of ``x``
after flattening the leading dims):

    int4 / int3 / ternary:  M == 1 -> GEMV,  2 <= M <= 64 -> split-K tl.dot,  M > 64 -> GEMM
    ternary_a8:             one int8 tl.dot kernel (split-K for small M, tiled for large)

and the backend from the device: Triton for CUDA tensors, the PyTorch
reference elsewhere.  ``COMPRESS_KERNELS_BACKEND=reference|triton|auto``
overrides that (``triton`` on the CPU runs the interpreter when
``TRITON_INTERPRET=1``).  If a Triton kernel cannot be imported, compiled or
launched, the call falls back to the reference and warns once; that kernel
then stays on the reference for the rest of the process.

The op is registered as ``torch.ops.compress.quant_matmul`` with a fake
(meta) implementation and a backward for the activations, so modules calling
it work under ``torch.compile`` (CUDA graphs included) and pass gradients to
earlier layers while the packed weights stay frozen.  ``quant_matmul`` goes
through the op when compiling or when x needs a gradient, and straight to the
same code otherwise.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Callable, Optional

import torch

from .formats import LINEAR_FORMATS, get_format
from .tuning import SPLITK_MAX_M, kernel_for

__all__ = ["FORMATS", "SPLITK_MAX_M", "BACKEND_ENV", "quant_matmul", "choose_kernel", "reset_fallbacks"]

FORMATS = LINEAR_FORMATS  # the names quant_matmul takes: int4, ternary, ternary_a8
BACKEND_ENV = "COMPRESS_KERNELS_BACKEND"
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# kernel name -> (module, function); each function takes the format's triton_args
_TRITON = {kernel: (get_format(fmt).triton_module, kernel) for fmt in FORMATS for kernel in get_format(fmt).kernels.values()}

# kernel (or "triton" for an import failure) -> reason; each warns once
_FAILED: dict[str, str] = {}


def choose_kernel(fmt: str, M: int) -> str:
    """Name of the kernel that serves ``fmt`` at batch size ``M``."""
    get_format(fmt, "linear")  # one sentence for an unknown name
    return kernel_for(fmt, M)


def reset_fallbacks() -> None:
    """Forget earlier Triton failures so the next call tries Triton (and may warn) again."""
    _FAILED.clear()


def _backend(x: torch.Tensor) -> str:
    choice = os.environ.get(BACKEND_ENV, "auto").lower()
    if choice not in ("auto", "triton", "reference"):
        raise ValueError(f"{BACKEND_ENV}={choice!r} is not a backend; use auto, triton or reference.")
    if choice == "auto":
        return "triton" if x.is_cuda else "reference"
    return choice


def _triton_function(kernel: str) -> Callable:
    module, name = _TRITON[kernel]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def _validate(x, qweight, scales, zeros, fmt: str, group_size: int) -> tuple[int, int]:
    """Check the packed tensors and x against the format; return ``(N, K)``."""
    N, K = get_format(fmt, "linear").check(qweight, scales, zeros, group_size)
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features but the packed {fmt} weight expects K={K}; check in_features.")
    return N, K


def _impl(x, qweight, scales, zeros, fmt: str, group_size: int) -> torch.Tensor:
    _, K = _validate(x, qweight, scales, zeros, fmt, group_size)
    return _run(x, qweight, scales, zeros, fmt, group_size, K)


def _run(x, qweight, scales, zeros, fmt: str, group_size: int, K: int) -> torch.Tensor:
    M = x.numel() // K if K else 0
    spec = get_format(fmt, "linear")
    kernel = kernel_for(fmt, M)
    use_triton = (
        M > 0 and x.dtype in _TRITON_DTYPES and _backend(x) == "triton"
        and "triton" not in _FAILED and kernel not in _FAILED
    )
    if use_triton:
        try:
            fn = _triton_function(kernel)
        except ImportError as exc:  # no triton at all: one warning for every kernel
            _fallback("triton", f"Triton cannot be imported ({exc})")
        else:
            try:
                return fn(*spec.triton_args(x, qweight, scales, zeros, group_size))
            except torch.OutOfMemoryError:
                raise  # the reference would need even more memory
            except Exception as exc:  # compile or launch failure
                _fallback(kernel, f"Triton kernel {kernel} failed ({type(exc).__name__}: {str(exc)[:300]})")
    return spec.reference(x, qweight, scales, zeros, group_size)


def _fallback(key: str, reason: str) -> None:
    _FAILED[key] = reason
    warnings.warn(
        f"compress.kernels: {reason}; using the PyTorch reference instead for the rest of this process "
        f"(slower, same maths). Set {BACKEND_ENV}=reference to silence this.",
        RuntimeWarning,
        stacklevel=4,
    )


# --------------------------------------------------------------------------- custom op

@torch.library.custom_op("compress::quant_matmul", mutates_args=())
def _quant_matmul_op(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    fmt: str,
    group_size: int,
) -> torch.Tensor:
    return _impl(x, qweight, scales, zeros, fmt, group_size)


@_quant_matmul_op.register_fake
def _quant_matmul_fake(x, qweight, scales, zeros, fmt, group_size):
    K = get_format(fmt, "linear").packed_k(qweight)
    torch._check(x.shape[-1] == K, lambda: f"x's last dim does not match the packed {fmt} weight")
    return x.new_empty((*x.shape[:-1], qweight.shape[1]))


def _setup_context(ctx, inputs, output) -> None:
    x, qweight, scales, zeros, fmt, group_size = inputs
    ctx.save_for_backward(qweight, scales, zeros)
    ctx.fmt, ctx.group_size = fmt, group_size


def _backward(ctx, grad: torch.Tensor):
    # d(x @ W^T)/dx = grad @ W; the A8 path uses the straight-through estimator (as BitNet's QAT).
    qweight, scales, zeros = ctx.saved_tensors
    w = get_format(ctx.fmt, "linear").dequantize_packed(qweight, scales, zeros, ctx.group_size, dtype=torch.float32)
    grad_x = (grad.reshape(-1, w.shape[0]).to(torch.float32) @ w).to(grad.dtype)
    return grad_x.reshape(*grad.shape[:-1], w.shape[1]), None, None, None, None, None


_quant_matmul_op.register_autograd(_backward, setup_context=_setup_context)


def quant_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor] = None,
    *,
    fmt: str,
    group_size: int = 128,
) -> torch.Tensor:
    """``x[..., K] @ W.T`` for a packed weight W ``[N, K]``; returns ``[..., N]`` in ``x.dtype``.

    ``fmt`` is ``"int4"`` or ``"int3"`` (``scales``/``zeros`` ``[K/G, N]``, ``group_size`` G,
    -1 for per-channel), ``"ternary"`` or ``"ternary_a8"`` (``scales`` is the
    ``[N]`` or per-tensor scale; int8 per-token activations for ``_a8``).
    Layouts: :mod:`compress.kernels.formats`.
    """
    N, K = _validate(x, qweight, scales, zeros, fmt, group_size)
    scales, group_size = get_format(fmt).kernel_operands(scales, group_size, N, K)
    if _plain_eager(x):
        # Same computation without the dispatcher round trip, which costs tens of
        # microseconds per call: too much for eager decode of a small model.
        return _run(x, qweight, scales, zeros, fmt, group_size, K)
    return torch.ops.compress.quant_matmul(x, qweight, scales, zeros, fmt, group_size)


def _plain_eager(x: torch.Tensor) -> bool:
    """True outside torch.compile/export, for a real tensor that needs no gradient."""
    return (
        type(x) is torch.Tensor and not x.is_meta
        and not (x.requires_grad and torch.is_grad_enabled())
        and not torch.compiler.is_compiling()
    )
