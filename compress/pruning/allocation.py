"""Per-layer sparsity: Adapt-Pruner's update rule, width rounding and the budget search.

Plain numbers and tensors only (ALGORITHMS.md §1.2-1.3):

- raw layer importance ``r_l = -mean cos(h_in, h_out)`` (lower similarity =
  more important), normalised to ``Î_l = (r_l - mean r) / max |r - mean r|``;
- every sub-step ``s_l <- clip(s_l + Delta - A * Î_l, 0, 0.99)``; uniform
  allocation is the same rule with ``Î = 0``;
- layer l keeps ``C_init * (1 - s_l)`` MLP channels (rounded to a multiple of
  ``round_to``) and ``ceil(G_init * (1 - s_l))`` kv groups, never fewer than
  ``min(round_to, C_init)`` channels and one group, never more than it has.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

MAX_SPARSITY = 0.99
Widths = tuple[int, int]  # (MLP channels, kv groups) of one layer


def layer_importance(cosine: torch.Tensor) -> torch.Tensor:
    """Raw importance from each layer's mean input/output cosine similarity."""
    return -cosine.double()


def normalise(raw: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
    """``Î`` in [-1, 1] with mean 0 over the ``active`` layers (0 elsewhere); all zeros when they score alike.

    Layers already at the sparsity cap are left out: were they counted, the
    most important layer of a small model could stay at 0 forever while the
    rest sit at the cap, and the budget would never be met.
    """
    raw = raw.double()
    active = torch.ones_like(raw, dtype=torch.bool) if active is None else active
    out = torch.zeros_like(raw)
    if int(active.sum()) < 2:
        return out
    centred = raw[active] - raw[active].mean()
    scale = centred.abs().max()
    if scale <= 1e-12 * max(1.0, raw[active].abs().max().item()):
        return out
    out[active] = centred / scale
    return out


def update(s: torch.Tensor, delta: float, amplitude: float, importance: torch.Tensor) -> torch.Tensor:
    """One Adapt-Pruner update of the cumulative per-layer sparsities."""
    return (s + delta - amplitude * importance).clamp(0.0, MAX_SPARSITY)


def keep_channels(c_init: int, c_now: int, s: float, round_to: int) -> int:
    """MLP channels layer keeps at sparsity ``s``: a multiple of ``round_to`` once it is pruned."""
    target = c_init * (1.0 - s)
    if target >= c_now:
        return c_now
    keep = round_to * int(target / round_to + 0.5)
    return max(min(round_to, c_init), min(keep, c_now))


def keep_groups(g_init: int, g_now: int, s: float) -> int:
    """kv groups a layer keeps at sparsity ``s``: a whole group goes only once ``s`` covers it."""
    return max(1, min(g_now, math.ceil(g_init * (1.0 - s) - 1e-9)))


@dataclass(frozen=True)
class LayerBudget:
    """What allocation needs to know of one layer."""

    mlp_init: int
    kv_init: int
    mlp_channel_params: int
    kv_group_params: int

    def params(self, w: Widths) -> int:
        return w[0] * self.mlp_channel_params + w[1] * self.kv_group_params


def widths_at(layers: Sequence[LayerBudget], now: Sequence[Widths], s: torch.Tensor, round_to: int) -> list[Widths]:
    """Each layer's widths at sparsities ``s`` (never wider than it is ``now``)."""
    return [
        (keep_channels(b.mlp_init, w[0], float(sl), round_to), keep_groups(b.kv_init, w[1], float(sl)))
        for b, w, sl in zip(layers, now, s)
    ]


def prunable_params(layers: Sequence[LayerBudget], widths: Sequence[Widths]) -> int:
    return sum(b.params(w) for b, w in zip(layers, widths))


def step(
    s: torch.Tensor,
    delta: float,
    amplitude: float,
    importance: torch.Tensor,
    params_at: Callable[[torch.Tensor], int],
    target: float,
) -> torch.Tensor:
    """The next sparsities: a full sub-step, or the least fraction of it that meets ``target``.

    Shortening only the last sub-step lands the parameter count at the budget
    (within one rounding step) instead of up to a whole sub-step below it.
    Parameters fall monotonically with the fraction, so bisection finds it.
    """
    full = update(s, delta, amplitude, importance)
    if params_at(full) > target:
        return full
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if params_at(update(s, mid * delta, mid * amplitude, importance)) <= target:
            hi = mid
        else:
            lo = mid
    return update(s, hi * delta, hi * amplitude, importance)
