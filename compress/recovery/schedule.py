"""Learning-rate schedules and the QAT lambda ramp: pure functions of the step.

Being functions of the step (not stateful scheduler objects), they need no
state in a checkpoint beyond the step itself, and resume exactly.
"""
from __future__ import annotations

import math


def warmup_steps(total: int, warmup_fraction: float) -> int:
    return int(round(warmup_fraction * total))


def lr_factor(
    step: int,
    total: int,
    schedule: str = "wsd",
    warmup_fraction: float = 0.05,
    decay_fraction: float = 0.2,
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based) of ``total``.

    Warm-up: ``(step + 1) / W`` for the first ``W = round(warmup_fraction *
    total)`` steps (the first step already learns).  Then:

    - ``"cosine"``: ``m + (1 - m) * (1 + cos(pi * p)) / 2`` with ``p = (step -
      W) / (total - W)``, from 1 down toward ``m = min_ratio``;
    - ``"wsd"`` (warmup-stable-decay): 1 until the last ``D = round(
      decay_fraction * total)`` steps, then linear ``1 - (1 - m) * p`` with
      ``p = (step - (total - D)) / D``;
    - ``"constant"``: 1.
    """
    if not 0 <= step < total:
        raise ValueError(f"step {step} is outside the schedule of {total} steps.")
    W = warmup_steps(total, warmup_fraction)
    if step < W:
        return (step + 1) / W
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        p = (step - W) / max(1, total - W)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "wsd":
        D = int(round(decay_fraction * total))
        start = max(W, total - D)
        if step < start or D == 0:
            return 1.0
        p = (step - start) / max(1, total - start)
        return 1.0 - (1.0 - min_ratio) * p
    raise ValueError(f"unknown schedule {schedule!r}.")


def qat_lambda(step: int, warmup: int) -> float:
    """BitNet's fake-quant warm-up, ``min(step / warmup, 1)``; 1 from the start when ``warmup`` is 0."""
    return 1.0 if warmup <= 0 else min(1.0, step / warmup)
