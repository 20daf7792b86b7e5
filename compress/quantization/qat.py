"""Fake quantisation for quantisation-aware training (QAT).

``FakeQuantLinear`` is an ``nn.Linear`` whose latent full-precision weight is
trained while the forward sees the quantised one, through the
straight-through estimator with a warm-up factor lambda (ALGORITHMS.md 2.2):

    w_eff = w + lambda * sg(q(w) - w)        (same for a8 activations)

so lambda = 0 is the float model and lambda = 1 the quantised one, and the
gradient reaches ``w`` as the identity.  ``q`` is the round-to-nearest
quantiser of ``quantizers.py`` with scales rounded to their storage dtype, so
``QuantLinear.from_linear`` on a trained module reproduces the lambda = 1
outputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import ConfigError
from compress.quantization.config import QuantConfig, TernaryConfig
from compress.kernels.formats import a8_rescale, a8_weight_scale, quantize_activations_int8
from compress.quantization.quantizers import fake_quantize, fake_quantize_activations, quantize_ternary


def straight_through(x: torch.Tensor, q: torch.Tensor, lam: float) -> torch.Tensor:
    """Value ``x + lam * (q - x)`` (exactly ``q`` at lam = 1, ``x`` at 0); gradient identity to ``x``."""
    x_const = x.detach()
    # (x - x.detach()) is exactly zero, so the value is exactly the lerp while autograd sees x.
    return torch.lerp(x_const, q.to(x.dtype), lam) + (x - x_const)


class _TernaryA8(torch.autograd.Function):
    """W1.58A8 at lambda = 1 with the kernels' arithmetic (integer dot, then both scales), so the
    packed model reproduces it bit for bit; backward is the straight-through estimator."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x_q, inv = quantize_activations_int8(x)
        acc = x_q.to(torch.float32) @ codes.t()
        y = a8_rescale(acc, inv, a8_weight_scale(scale, codes.shape[0]))
        ctx.save_for_backward(x_q, inv, codes, scale)
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        return y.to(x.dtype).reshape(*x.shape[:-1], codes.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_q, inv, codes, scale = ctx.saved_tensors
        g = grad.reshape(-1, codes.shape[0]).to(torch.float32)
        w_q = codes * scale[:, None]
        grad_x = (g @ w_q).to(ctx.x_dtype).reshape(*grad.shape[:-1], codes.shape[1])
        grad_w = (g.t() @ (x_q.to(torch.float32) / inv[:, None])).to(ctx.w_dtype)
        return grad_x, grad_w, None, None


class FakeQuantLinear(nn.Linear):
    """``nn.Linear`` with latent fp weights and straight-through fake quantisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, qconfig: QuantConfig,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.qconfig = qconfig
        self.qat_lambda = 1.0

    @classmethod
    def from_linear(cls, linear: nn.Linear, qconfig: QuantConfig, qat_lambda: float = 1.0) -> "FakeQuantLinear":
        """Wrap ``linear``'s own parameters (no copy), so an optimiser over them keeps working."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     qconfig=qconfig, device="meta")
        module.weight = linear.weight
        module.bias = linear.bias
        module.qat_lambda = float(qat_lambda)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam, w = self.qat_lambda, self.weight
        if lam >= 1 and isinstance(self.qconfig, TernaryConfig) and self.qconfig.activations == "a8":
            # Rounding activations to int8 amplifies last-bit differences, so use the kernels' own sums.
            q = quantize_ternary(w, self.qconfig)
            scale = q.scale.to(torch.float32).expand(self.out_features)
            y = _TernaryA8.apply(x, w, q.codes.to(torch.float32), scale)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        if lam > 0:
            w = straight_through(w, fake_quantize(w, self.qconfig), lam)
            if self.qconfig.activations == "a8":
                x = straight_through(x, fake_quantize_activations(x), lam)
        # bias added apart, as QuantLinear does, so both give bit-identical sums
        y = F.linear(x, w)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fake-quant {self.qconfig.label()}, lambda={self.qat_lambda:g}"


def set_qat_lambda(model: nn.Module, lam: float) -> int:
    """Set the warm-up factor of every ``FakeQuantLinear`` in ``model``; return how many were set.

    BitNet's conversion recipe ramps it as ``lam = min(step / 1000, 1)``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"the QAT lambda must be between 0 and 1, got {lam}.")
    n = 0
    for m in model.modules():
        if isinstance(m, FakeQuantLinear):
            m.qat_lambda = float(lam)
            n += 1
    return n
