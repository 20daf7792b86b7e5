"""The packed layouts of an ``nn.Linear`` weight ``[N, K]``, one class each.

``Int4Format`` (W4A16, group-wise), ``Int3Format`` (W3A16, the same with
3-bit codes as bit planes), ``TernaryFormat`` (W1.58A16) and
``TernaryA8Format`` (W1.58A8: the same stored layout, int8 per-token
activations and its own kernel).  The class itself answers what the kernel
dispatch needs from a format name (shape checks, the reference matmul, the
Triton kernels, dequantising packed tensors); an instance is one module's
layout (its group size, symmetry or per-channel scale) and gives the buffers
a ``QuantLinear`` registers, its label and its manifest description.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from .layout import (
    INT3_PER_BLOCK,
    INT4_PER_WORD,
    TERNARY_PER_WORD,
    a8_rescale,
    a8_weight_scale,
    broadcast_ternary_scale,
    check_int4,
    check_ternary,
    dequantize_int3,
    dequantize_int4,
    dequantize_ternary,
    int4_group_problem,
    int4_num_groups,
    k_problem,
    pack_int3,
    pack_int4,
    pack_ternary,
    quantize_activations_int8,
    unpack_int3,
    unpack_int4,
    unpack_ternary,
)

__all__ = ["LinearFormat", "GroupedIntFormat", "Int4Format", "Int3Format", "TernaryFormat", "TernaryA8Format"]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x[..., K] @ w.T`` in float32, returned in ``x.dtype`` as ``[..., N]``."""
    y = _flat(x).to(torch.float32) @ w.t()
    return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


@dataclass(frozen=True)
class LinearFormat:
    """Base of the packed linear formats (see :mod:`compress.kernels.formats` for the layouts)."""

    kind: ClassVar[str] = "linear"
    name: ClassVar[str]  # the name quant_matmul takes (``fmt=``)
    method: ClassVar[str]  # the quantisation method it stores (QuantConfig.method, manifests)
    activations: ClassVar[str] = "a16"
    bits: ClassVar[int]  # bits of one code field in the int32 words
    per_word: ClassVar[int]  # codes per int32 word: K must be a multiple
    word_tiles: ClassVar[int] = 1  # packed-word tiles a kernel loads per K-block (int3: one per bit plane)
    grouped: ClassVar[bool] = False  # scales per group along K (a K-block may not straddle two groups)
    min_dot_k: ClassVar[int] = 16  # smallest K tile tl.dot takes for this format's operands
    triton_module: ClassVar[str]  # compress.kernels.<module> holding the kernels
    kernels: ClassVar[dict[str, str]]  # kernel family (gemv, splitk, gemm, a8) -> kernel name

    # -- what the dispatch needs from the name ----------------------------------
    @classmethod
    def shape_problem(cls, N: int, K: int, group_size: Optional[int] = None) -> Optional[str]:
        """Why a ``[N, K]`` weight cannot use this format, or None if it can."""
        return k_problem(cls.method, cls.per_word, N, K)

    @classmethod
    def packed_k(cls, qweight: torch.Tensor) -> int:
        """Inputs K a packed ``qweight`` holds."""
        return qweight.shape[0] * cls.per_word

    @classmethod
    def check(cls, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
              group_size: Optional[int]) -> tuple[int, int]:
        """Validate packed tensors against the layout; return ``(N, K)``."""
        raise NotImplementedError

    @classmethod
    def kernel_operands(cls, scales: torch.Tensor, group_size: Optional[int], N: int, K: int
                        ) -> tuple[torch.Tensor, int]:
        """``(scales, group_size)`` as every kernel takes them (the group size resolved, 0 when unused)."""
        raise NotImplementedError

    @classmethod
    def pack(cls, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def unpack(cls, qweight: torch.Tensor, K: Optional[int] = None) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def dequantize_packed(cls, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                          group_size: Optional[int], dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The float ``[N, K]`` weight packed tensors stand for."""
        raise NotImplementedError

    @classmethod
    def reference(cls, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                  zeros: Optional[torch.Tensor], group_size: Optional[int]) -> torch.Tensor:
        """The pure-PyTorch matmul ``x[..., K] @ W.T`` (float32 inside, ``x.dtype`` out)."""
        return _matmul(x, cls.dequantize_packed(qweight, scales, zeros, group_size, dtype=torch.float32))

    @classmethod
    def triton_args(cls, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                    zeros: Optional[torch.Tensor], group_size: int) -> tuple:
        """The arguments this format's Triton kernels take (the reference's, in order)."""
        return (x, qweight, scales)

    # -- one module's layout -----------------------------------------------------
    @property
    def group_size(self) -> int:
        return 0

    @property
    def symmetric(self) -> bool:
        return True

    @property
    def per_channel(self) -> bool:
        return False

    def buffer_shapes(self, N: int, K: int) -> dict[str, Optional[tuple[int, ...]]]:
        """Shapes of ``qweight`` (int32), ``scales`` and ``zeros`` (float; None when not stored)."""
        raise NotImplementedError

    def buffers(self, N: int, K: int, scale_dtype: torch.dtype, device: Any = None
                ) -> dict[str, Optional[torch.Tensor]]:
        """Zero-filled ``qweight``, ``scales`` and ``zeros`` (None when not stored) of a ``[N, K]`` weight."""
        return {
            name: None if shape is None else torch.zeros(
                shape, dtype=torch.int32 if name == "qweight" else scale_dtype, device=device)
            for name, shape in self.buffer_shapes(N, K).items()
        }

    def dequantize(self, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return self.dequantize_packed(qweight, scales, zeros, self.group_size, dtype)

    def label(self, K: int) -> str:
        """Short name, e.g. ``int4 g128 sym`` or ``ternary per-tensor a8``."""
        raise NotImplementedError

    def detail(self, K: int) -> str:
        """The format part of a module's repr."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The format fields of a ``QuantLinear`` description (checkpoint manifests)."""
        return {"method": self.method, "group_size": self.group_size or None, "symmetric": self.symmetric,
                "per_channel": self.per_channel, "activations": self.activations}


@dataclass(frozen=True)
class GroupedIntFormat(LinearFormat):
    """Base of the group-wise integer layouts: a float scale (and zero point when asymmetric) per group of G inputs."""

    grouped: ClassVar[bool] = True

    group_size: int = 128  # the resolved group size G (K for per-channel)
    symmetric: bool = True  # fixed offset (8 for int4, 4 for int3), no zero points stored

    @classmethod
    def shape_problem(cls, N: int, K: int, group_size: Optional[int] = 128) -> Optional[str]:
        return k_problem(cls.name, cls.per_word, N, K) or int4_group_problem(N, K, group_size, cls.name)

    @classmethod
    def check(cls, qweight, scales, zeros, group_size):
        N, K, _ = check_int4(qweight, scales, zeros, group_size, bits=cls.bits)
        return N, K

    @classmethod
    def kernel_operands(cls, scales, group_size, N, K):
        return scales, K if group_size in (-1, 0, None) else int(group_size)

    @classmethod
    def triton_args(cls, x, qweight, scales, zeros, group_size):
        return (x, qweight, scales, zeros, group_size)

    def buffer_shapes(self, N, K):
        n_groups = int4_num_groups(K, self.group_size)
        return {"qweight": (self.qweight_rows(K), N), "scales": (n_groups, N),
                "zeros": None if self.symmetric else (n_groups, N)}

    def _group_text(self, K: int, per_group: str) -> str:
        return "per-channel" if self.group_size == K else per_group

    def label(self, K):
        return f"{self.name} {self._group_text(K, f'g{self.group_size}')} {'sym' if self.symmetric else 'asym'}"

    def detail(self, K):
        g = self._group_text(K, f"group_size={self.group_size}")
        return f"{self.name}, {g}, {'symmetric' if self.symmetric else 'asymmetric'}"


@dataclass(frozen=True)
class Int4Format(GroupedIntFormat):
    """W4A16: 4-bit codes, 8 per word, a float scale (and zero point when asymmetric) per group of G inputs."""

    name: ClassVar[str] = "int4"
    method: ClassVar[str] = "int4"
    bits: ClassVar[int] = 4
    per_word: ClassVar[int] = INT4_PER_WORD
    triton_module: ClassVar[str] = "triton_int4"
    kernels: ClassVar[dict[str, str]] = {"gemv": "int4_gemv", "splitk": "int4_splitk", "gemm": "int4_gemm"}

    @classmethod
    def qweight_rows(cls, K: int) -> int:
        return K // INT4_PER_WORD

    @classmethod
    def pack(cls, codes):
        return pack_int4(codes)

    @classmethod
    def unpack(cls, qweight, K=None):
        return unpack_int4(qweight, K)

    @classmethod
    def dequantize_packed(cls, qweight, scales, zeros, group_size, dtype=None):
        return dequantize_int4(qweight, scales, zeros, group_size, dtype=dtype)


@dataclass(frozen=True)
class Int3Format(GroupedIntFormat):
    """W3A16: 3-bit codes as bit planes (32 inputs in 3 words), a float scale (and zero point) per group of G inputs.

    The int4 Triton kernels serve it with ``BITS=3`` (the code is rebuilt from its three planes).
    """

    name: ClassVar[str] = "int3"
    method: ClassVar[str] = "int3"
    bits: ClassVar[int] = 3
    per_word: ClassVar[int] = INT3_PER_BLOCK  # inputs per block of 3 words: K must be a multiple
    word_tiles: ClassVar[int] = 3
    triton_module: ClassVar[str] = "triton_int4"
    kernels: ClassVar[dict[str, str]] = {"gemv": "int3_gemv", "splitk": "int3_splitk", "gemm": "int3_gemm"}

    @classmethod
    def qweight_rows(cls, K: int) -> int:
        return 3 * K // INT3_PER_BLOCK

    @classmethod
    def packed_k(cls, qweight):
        return qweight.shape[0] // 3 * INT3_PER_BLOCK

    @classmethod
    def pack(cls, codes):
        return pack_int3(codes)

    @classmethod
    def unpack(cls, qweight, K=None):
        return unpack_int3(qweight, K)

    @classmethod
    def dequantize_packed(cls, qweight, scales, zeros, group_size, dtype=None):
        return dequantize_int3(qweight, scales, zeros, group_size, dtype=dtype)


@dataclass(frozen=True)
class TernaryFormat(LinearFormat):
    """W1.58A16: codes w + 1 in {0, 1, 2}, 16 per word, one float scale per tensor or per output channel."""

    name: ClassVar[str] = "ternary"
    method: ClassVar[str] = "ternary"
    bits: ClassVar[int] = 2
    per_word: ClassVar[int] = TERNARY_PER_WORD
    triton_module: ClassVar[str] = "triton_ternary"
    kernels: ClassVar[dict[str, str]] = {"gemv": "ternary_gemv", "splitk": "ternary_splitk", "gemm": "ternary_gemm"}

    per_channel: bool = False  # one scale per output channel (else one per tensor)

    @classmethod
    def check(cls, qweight, scales, zeros, group_size):
        N, K = check_ternary(qweight, scales)
        if zeros is not None:
            raise ValueError("ternary weights have no zero points (the code offset 1 is fixed); pass zeros=None.")
        return N, K

    @classmethod
    def kernel_operands(cls, scales, group_size, N, K):
        return broadcast_ternary_scale(scales, N), 0

    @classmethod
    def pack(cls, codes):
        return pack_ternary(codes)

    @classmethod
    def unpack(cls, qweight, K=None):
        return unpack_ternary(qweight, K)

    @classmethod
    def dequantize_packed(cls, qweight, scales, zeros, group_size, dtype=None):
        return dequantize_ternary(qweight, scales, dtype=dtype)

    def buffer_shapes(self, N, K):
        return {"qweight": (K // TERNARY_PER_WORD, N), "scales": (N if self.per_channel else 1,), "zeros": None}

    def _scale_text(self) -> str:
        return "per-channel" if self.per_channel else "per-tensor"

    def label(self, K):
        return f"ternary {self._scale_text()} {self.activations}"

    def detail(self, K):
        return f"ternary, {self._scale_text()} scale, {self.activations}"


@dataclass(frozen=True)
class TernaryA8Format(TernaryFormat):
    """W1.58A8: the ternary layout with int8 per-token activations, rescaled as BitNet's ``BitLinear``."""

    name: ClassVar[str] = "ternary_a8"
    activations: ClassVar[str] = "a8"
    min_dot_k: ClassVar[int] = 32  # int8 tl.dot
    kernels: ClassVar[dict[str, str]] = {"a8": "ternary_a8"}

    @classmethod
    def reference(cls, x, qweight, scales, zeros, group_size):
        """``y[m, n] = acc[m, n] / (ws[n] * inv[m])``, ``acc`` the exact integer dot (see the layout notes).

        The integer dot is computed exactly in float32 (|partial sums| < 2**24 for K < 132k).
        """
        x_q, inv = quantize_activations_int8(x)
        w = dequantize_ternary(qweight, torch.ones((), dtype=torch.float32, device=qweight.device))
        acc = x_q.to(torch.float32) @ w.t()
        y = a8_rescale(acc, inv, a8_weight_scale(scales, w.shape[0]).to(acc.device))
        return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])
