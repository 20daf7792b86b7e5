"""``QuantLinear``: an ``nn.Linear`` replacement holding packed low-bit weights.

Storage follows :mod:`compress.kernels.formats` (the one shape contract):
int4 ``qweight`` int32 ``[K/8, N]``, ``scales`` ``[ceil(K/G), N]``, ``zeros``
the same shape or None (symmetric); ternary ``qweight`` int32 ``[K/16, N]``
(2-bit codes w+1), ``scales`` ``[1]`` (per tensor) or ``[N]``.  Everything is
a buffer, not a parameter: the packed weights are frozen, and
``logical_numel()`` tells ``compress.sizes`` how many weights they stand for.
The forward calls ``compress.kernels.dispatch.quant_matmul`` (Triton on CUDA,
the PyTorch reference elsewhere).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from compress.kernels.dispatch import quant_matmul
from compress.kernels.formats import (
    INT4_PER_WORD,
    TERNARY_PER_WORD,
    dequantize_int4,
    dequantize_ternary,
    pack_int4,
    pack_ternary,
)
from compress.packed import PackedModule
from compress.quantization.config import QuantConfig, QuantError
from compress.quantization.quantizers import (
    Int4Weights,
    Quantised,
    TernaryWeights,
    effective_group_size,
    num_groups,
    quantize_weight,
)


class QuantLinear(PackedModule):
    """y = x W^T + b with W stored packed (int4 or ternary)."""

    kind = "linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        method: str = "int4",
        group_size: Optional[int] = 128,
        symmetric: bool = True,
        per_channel: bool = False,
        activations: str = "a16",
        bias: bool = False,
        scale_dtype: torch.dtype | str = torch.float16,
        bias_dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> None:
        """An empty (zero) module of the right buffer shapes, e.g. to load a state dict into.

        ``QuantLinear(**module.describe())`` rebuilds a module's skeleton.
        """
        super().__init__()
        if isinstance(scale_dtype, str):
            scale_dtype = getattr(torch, scale_dtype)
        self.in_features, self.out_features = in_features, out_features
        self.method, self.activations, self.per_channel = method, activations, per_channel
        K, N = in_features, out_features
        if method == "int4":
            self.group_size = K if group_size in (-1, None) else group_size
            self.symmetric = symmetric
            n_groups = num_groups(K, self.group_size)
            self.register_buffer("qweight", torch.zeros(K // INT4_PER_WORD, N, dtype=torch.int32, device=device))
            self.register_buffer("scales", torch.zeros(n_groups, N, dtype=scale_dtype, device=device))
            zeros = None if symmetric else torch.zeros(n_groups, N, dtype=scale_dtype, device=device)
            self.register_buffer("zeros", zeros)
        else:
            self.group_size, self.symmetric = 0, True
            self.register_buffer("qweight", torch.zeros(K // TERNARY_PER_WORD, N, dtype=torch.int32, device=device))
            self.register_buffer("scales", torch.zeros(N if per_channel else 1, dtype=scale_dtype, device=device))
            self.register_buffer("zeros", None)
        b = torch.zeros(N, dtype=bias_dtype, device=device) if bias else None
        self.register_buffer("bias", b)

    # -- construction ------------------------------------------------------
    @classmethod
    def from_linear(
        cls, linear: nn.Linear, config: QuantConfig, quantised: Optional[Quantised] = None
    ) -> "QuantLinear":
        """Quantise ``linear`` (round-to-nearest unless ``quantised`` values, e.g. from GPTQ, are given)."""
        w = linear.weight
        q = quantised if quantised is not None else quantize_weight(w, config)
        module = cls(
            linear.in_features,
            linear.out_features,
            method=config.method,
            group_size=effective_group_size(config, linear.in_features),
            symmetric=config.symmetric,
            per_channel=config.per_channel,
            activations=config.activations,
            bias=linear.bias is not None,
            scale_dtype=config.torch_scale_dtype,
            bias_dtype=w.dtype,
            device=w.device,
        )
        module.load_quantised(q)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    @torch.no_grad()
    def load_quantised(self, q: Quantised) -> None:
        """Pack unpacked codes and scales into this module's buffers."""
        if isinstance(q, TernaryWeights):
            self.qweight.copy_(pack_ternary((q.codes + 1).to(torch.uint8)))
            self.scales.copy_(q.scale.reshape(self.scales.shape))
            return
        if not isinstance(q, Int4Weights) or q.group_size != self.group_size or (q.zeros is None) != (self.zeros is None):
            raise QuantError(f"quantised values do not fit this {self.extra_repr()} module; quantise with its config.")
        self.qweight.copy_(pack_int4(q.codes))
        self.scales.copy_(q.scales)
        if self.zeros is not None:
            self.zeros.copy_(q.zeros)

    def _apply(self, fn, recurse=True):
        # model.to(dtype) casts every float buffer; scales and zero points keep their
        # stored dtype (their values were rounded to it), so only their device follows.
        kept = {n: t for n, t in (("scales", self.scales), ("zeros", self.zeros)) if t is not None}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                setattr(self, name, old.to(device=new.device))
        return self

    # -- use -----------------------------------------------------------------
    @property
    def fmt(self) -> str:
        """The packed format name the kernel dispatch takes."""
        if self.method == "ternary":
            return "ternary_a8" if self.activations == "a8" else "ternary"
        return "int4"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = quant_matmul(x, self.qweight, self.scales, self.zeros, fmt=self.fmt, group_size=self.group_size)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float ``[N, K]`` weight the packed values stand for."""
        if self.method == "ternary":
            return dequantize_ternary(self.qweight, self.scales, dtype=dtype)
        return dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size, dtype=dtype)

    def logical_numel(self) -> int:
        """Weights (and bias entries) this module stands for, as an ``nn.Linear`` would count them."""
        return self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)

    def packed_bytes(self) -> int:
        """Bytes of the packed weight, scales and zero points (bias excluded)."""
        return sum(t.nbytes for t in (self.qweight, self.scales, self.zeros) if t is not None)

    def bits_per_weight(self) -> float:
        return 8.0 * self.packed_bytes() / (self.in_features * self.out_features)

    def describe(self) -> dict[str, Any]:
        """JSON-able description, enough to rebuild the empty module (checkpoint manifests)."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "method": self.method,
            "group_size": self.group_size if self.method == "int4" else None,
            "symmetric": self.symmetric,
            "per_channel": self.per_channel,
            "activations": self.activations,
            "bias": self.bias is not None,
            "scale_dtype": str(self.scales.dtype).removeprefix("torch."),
        }

    def label(self) -> str:
        """Short name of the format, e.g. ``int4 g128 sym`` or ``ternary per-tensor a8``."""
        if self.method == "ternary":
            return f"ternary {'per-channel' if self.per_channel else 'per-tensor'} {self.activations}"
        g = "per-channel" if self.group_size == self.in_features else f"g{self.group_size}"
        return f"int4 {g} {'sym' if self.symmetric else 'asym'}"

    def extra_repr(self) -> str:
        if self.method == "ternary":
            scale = "per-channel" if self.per_channel else "per-tensor"
            detail = f"ternary, {scale} scale, {self.activations}"
        else:
            g = "per-channel" if self.group_size == self.in_features else f"group_size={self.group_size}"
            detail = f"int4, {g}, {'symmetric' if self.symmetric else 'asymmetric'}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{detail}, {self.bits_per_weight():.2f} bits/weight"
        )
