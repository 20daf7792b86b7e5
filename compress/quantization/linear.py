"""``QuantLinear``: an ``nn.Linear`` replacement holding packed low-bit weights.

Storage follows :mod:`compress.kernels.formats` (the one shape contract):
int4 ``qweight`` int32 ``[K/8, N]``, ``scales`` ``[ceil(K/G), N]``, ``zeros``
the same shape or None (symmetric); int3 the same with ``qweight`` ``[3K/32, N]``
(bit planes); ternary ``qweight`` int32 ``[K/16, N]``
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
from compress.kernels.formats import LinearFormat, TernaryFormat, linear_format
from compress.packed import PackedModule
from compress.quantization.config import QuantConfig, QuantError
from compress.quantization.quantizers import (
    Int4Weights,
    Quantised,
    TernaryWeights,
    effective_group_size,
    quantize_weight,
)


class QuantLinear(PackedModule):
    """y = x W^T + b with W stored packed (int4, int3 or ternary).

    ``format`` is the layout object (:mod:`compress.kernels.formats`): the
    buffers, the kernel, the label and the description all come from it.
    """

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
        self.format: LinearFormat = linear_format(method, group_size=group_size, K=in_features, symmetric=symmetric,
                                                  per_channel=per_channel, activations=activations)
        for name, t in self.format.buffers(out_features, in_features, scale_dtype, device).items():
            self.register_buffer(name, t)
        b = torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None
        self.register_buffer("bias", b)

    # -- the format's fields, as attributes (checkpoints, exports and reports read them)
    @property
    def method(self) -> str:
        return self.format.method

    @property
    def group_size(self) -> int:
        return self.format.group_size

    @property
    def symmetric(self) -> bool:
        return self.format.symmetric

    @property
    def per_channel(self) -> bool:
        return self.format.per_channel

    @property
    def activations(self) -> str:
        return self.format.activations

    @activations.setter
    def activations(self, value: str) -> None:
        """Switch a ternary module between int8 (``"a8"``) and float (``"a16"``) activations; the weights stay."""
        if value not in ("a16", "a8") or (value == "a8" and not isinstance(self.format, TernaryFormat)):
            raise QuantError(f"activations must be 'a16' or 'a8' (ternary only), got {value!r} for a {self.method} module.")
        self.format = linear_format(self.method, group_size=self.group_size, K=self.in_features,
                                    symmetric=self.symmetric, per_channel=self.per_channel, activations=value)

    # -- construction ------------------------------------------------------
    @classmethod
    def from_linear(
        cls, linear: nn.Linear, config: QuantConfig, quantised: Optional[Quantised] = None
    ) -> "QuantLinear":
        """Quantise ``linear`` (round-to-nearest unless ``quantised`` values, e.g. from GPTQ, are given)."""
        w = linear.weight
        q = quantised if quantised is not None else quantize_weight(w, config)
        module = cls.empty_for(linear, config, bias_dtype=w.dtype, device=w.device)
        module.load_quantised(q)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    @classmethod
    def empty_for(cls, linear: nn.Module, config: QuantConfig, *, bias_dtype: torch.dtype = torch.float32,
                  device: Any = None) -> "QuantLinear":
        """The empty module ``config`` makes of ``linear`` (``device="meta"``: a skeleton for size and shape checks)."""
        return cls(
            linear.in_features,
            linear.out_features,
            method=config.packed_method,
            group_size=effective_group_size(config, linear.in_features),
            symmetric=config.symmetric,
            per_channel=config.per_channel,
            activations=config.activations,
            bias=linear.bias is not None,
            scale_dtype=config.torch_scale_dtype,
            bias_dtype=bias_dtype,
            device=device,
        )

    @torch.no_grad()
    def load_quantised(self, q: Quantised) -> None:
        """Pack unpacked codes and scales into this module's buffers."""
        if isinstance(q, TernaryWeights) and isinstance(self.format, TernaryFormat):
            self.qweight.copy_(self.format.pack((q.codes + 1).to(torch.uint8)))
            self.scales.copy_(q.scale.reshape(self.scales.shape))
            return
        if (not isinstance(q, Int4Weights) or q.group_size != self.group_size or (q.zeros is None) != (self.zeros is None)
                or q.bits != self.format.bits):
            raise QuantError(f"quantised values do not fit this {self.extra_repr()} module; quantise with its config.")
        self.qweight.copy_(self.format.pack(q.codes))
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
        return self.format.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = quant_matmul(x, self.qweight, self.scales, self.zeros, fmt=self.format.name, group_size=self.group_size)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float ``[N, K]`` weight the packed values stand for."""
        return self.format.dequantize(self.qweight, self.scales, self.zeros, dtype=dtype)

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
            **self.format.describe(),
            "bias": self.bias is not None,
            "scale_dtype": str(self.scales.dtype).removeprefix("torch."),
        }

    def label(self) -> str:
        """Short name of the format, e.g. ``int4 g128 sym`` or ``ternary per-tensor a8``."""
        return self.format.label(self.in_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{self.format.detail(self.in_features)}, {self.bits_per_weight():.2f} bits/weight"
        )
