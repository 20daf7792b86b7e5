"""``RecoverReport``: what a recovery run did and how the held-out numbers moved."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from compress.reports import Report


@dataclass
class RecoverReport(Report):
    objective: str
    steps: int  # optimiser steps done (including those before a resume)
    total_steps: int
    tokens: int  # training tokens seen, over all processes
    seconds: float  # wall time of this call
    world_size: int
    eval_before: dict[str, Any] | None  # {"step", "loss", "perplexity", "kl", "top1"}
    eval_after: dict[str, Any] | None  # after LoRA merge and QAT conversion
    best_eval: dict[str, Any] | None
    evals: list[dict[str, Any]] = field(default_factory=list)
    train: list[dict[str, Any]] = field(default_factory=list)  # {"step", "loss", "lr", ...}
    stopped_early: bool = False
    resumed_from: int | None = None
    lora_modules: int = 0
    lora_merged: bool = False
    qat_modules: int = 0
    qat_converted: bool = False
    log_path: str | None = None
    plot_path: str | None = None
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)
    parallel: str = "single"  # "single", "ddp" or "fsdp"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [f"recovery ({self.objective}): {self.steps}/{self.total_steps} steps, {self.tokens:,} tokens, "
                 f"{self.seconds:.1f} s on {self.world_size} process(es)"
                 + (f" ({self.parallel.upper()})" if self.world_size > 1 else "")]
        if self.resumed_from is not None:
            lines.append(f"  resumed from the checkpoint at step {self.resumed_from}")
        if self.stopped_early:
            lines.append("  stopped early: the held-out loss stopped improving")
        rows = [("", "before", "after")]
        for key, label in (("loss", "held-out loss"), ("perplexity", "perplexity"), ("kl", "KL to teacher"), ("top1", "top-1 agreement")):
            b = (self.eval_before or {}).get(key)
            a = (self.eval_after or {}).get(key)
            if b is not None or a is not None:
                rows.append((label, _num(b), _num(a)))
        if len(rows) > 1:
            w = [max(len(r[i]) for r in rows) for i in range(3)]
            lines += ["  " + "  ".join(v.ljust(w[0]) if i == 0 else v.rjust(w[i]) for i, v in enumerate(r)) for r in rows]
        if self.lora_modules:
            lines.append(f"  LoRA on {self.lora_modules} modules, {'merged' if self.lora_merged else 'not merged'}")
        if self.qat_modules:
            lines.append(f"  QAT on {self.qat_modules} modules, {'converted to packed' if self.qat_converted else 'still fake-quantised'}")
        for label, value in (("log", self.log_path), ("loss curve", self.plot_path), ("checkpoint", self.checkpoint)):
            if value:
                lines.append(f"  {label}: {value}")
        return "\n".join(lines + [f"  {n}" for n in self.notes])


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
