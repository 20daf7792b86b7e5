"""LoRA: low-rank adapters on linear modules, trained alone and merged into the float weights.

``y = base(x) + s * B A x`` with ``A`` ``[r, in]`` (Kaiming init from a
private seeded generator), ``B`` ``[out, r]`` (zeros, so training starts
from the model as it is) and ``s = alpha / r``.

On a fake-quantised (QAT) module the adapter goes *inside* the quantiser:
the forward quantises ``W + s B A``.  Merging then yields latent weights
whose packed form gives the same outputs, so "merge first, then quantise"
loses nothing.  Packed ``QuantLinear`` modules are refused: merging into
packed integers would need a second rounding.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from compress.arch import UnsupportedModelError, adapter_for
from compress.errors import ConfigError
from compress.quantization.config import name_matches
from compress.quantization.linear import QuantLinear
from compress.quantization.qat import FakeQuantLinear
from compress.recovery.config import RecoverError


class LoRALinear(nn.Module):
    """A linear module plus a trainable low-rank update."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if isinstance(base, QuantLinear):
            raise RecoverError(_PACKED_MESSAGE.format(names="this module"))
        if rank < 1:
            raise ConfigError(f"LoRA rank must be at least 1, got {rank}.")
        self.base = base
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        # Inside fake quantisation the update is folded into the weight, so there is no separate path to drop.
        self.fused = isinstance(base, FakeQuantLinear)
        if self.fused and dropout > 0:
            raise ConfigError(_QAT_DROPOUT)
        w = base.weight
        a = torch.empty(rank, base.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    # what model code may read off a projection
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta(self) -> torch.Tensor:
        """The update ``s * B A`` in the weight's shape."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            weight = self.base.weight + self.delta().to(self.base.weight.dtype)
            return functional_call(self.base, {"weight": weight}, (x,))
        update = F.linear(F.linear(self.dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return self.base(x) + update * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base module with the update added to its weight (in place)."""
        self.base.weight.add_(self.delta().to(self.base.weight.dtype))
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}{', in fake-quant' if self.fused else ''}"


_QAT_DROPOUT = "lora_dropout must be 0 on fake-quantised (QAT) modules, whose adapters are folded into the quantised weight."
_PACKED_MESSAGE = (
    "LoRA cannot go on packed QuantLinear modules ({names}): merging into packed weights would round twice; "
    "train LoRA on the float model (or one prepared with compress.quantization.prepare_qat), merge, then quantise."
)


def lora_target_names(model: nn.Module, targets: Sequence[str] = ()) -> list[str]:
    """Names of the linear modules LoRA goes on: matching ``targets`` (names or regexes), or by
    default every projection inside the decoder layers (every linear but the output head when the
    model family is unknown).  Raises when a target is packed or nothing matches."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear, LoRALinear))}
    if targets:
        names = [n for n in linears if any(name_matches(n, t) for t in targets)]
    else:
        try:
            names = [n for n in adapter_for(model).projection_names() if n in linears]
        except UnsupportedModelError:
            names = [n for n, m in linears.items() if m is not head]
    names = [n for n in names if not any(n.startswith(o + ".") for o in names)]  # a LoRALinear's own base
    packed = [n for n in names if isinstance(linears[n], QuantLinear)]
    if packed:
        raise RecoverError(_PACKED_MESSAGE.format(names=_listing(packed)))
    again = [n for n in names if isinstance(linears[n], LoRALinear)]
    if again:
        raise RecoverError(f"{_listing(again)} already carry LoRA adapters; merge them first with merge_lora(model).")
    if not names:
        what = f"lora_targets {list(targets)}" if targets else "the default LoRA targets"
        raise RecoverError(f"{what} matched no linear module of the model; give module names or regexes such as 'q_proj' or '.*mlp.*'.")
    return names


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float = 16.0,
    targets: Sequence[str] = (),
    dropout: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Wrap the target linears in ``LoRALinear`` and freeze every other parameter; return the names."""
    names = lora_target_names(model, targets)
    if dropout > 0 and any(isinstance(model.get_submodule(n), FakeQuantLinear) for n in names):
        raise ConfigError(_QAT_DROPOUT)
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        model.set_submodule(name, LoRALinear(model.get_submodule(name), rank, alpha, dropout, gen))
    return names


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight and put the base module back; return how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        model.set_submodule(name, model.get_submodule(name).merged())
    return len(names)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


def _listing(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
