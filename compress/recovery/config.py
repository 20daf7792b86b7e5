"""``RecoverConfig``: how a compressed model is trained back, validated before any step runs."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.errors import CompressError, ConfigError

SCHEDULES = ("wsd", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DISTRIBUTED = ("auto", "ddp", "fsdp")
DEFAULT_STEPS = 1000

# Fields that may differ between a run and its resumption: they change what is
# shown or kept, never the weights.
RESUME_EXEMPT = ("resume", "progress", "plot", "log_every", "keep_checkpoints", "output_dir")


class RecoverError(CompressError):
    """Recovery input that cannot be used: data, teacher, checkpoint or model."""


@dataclass(frozen=True)
class RecoverConfig:
    """Recovery training: distillation from a teacher (or plain next-token loss), QAT, LoRA.

    Budget: ``steps`` optimiser steps, or ``tokens`` training tokens (one of
    the two; neither means ``DEFAULT_STEPS``).  One step consumes a global
    batch of ``batch_size * grad_accum * world_size`` sequences, where
    ``batch_size`` is per process.

    Loss: ``alpha * KD + (1 - alpha) * CE`` with a teacher, KD being
    ``T^2 * KL(teacher || student)`` of next-token distributions at
    temperature ``T``; plain CE without one.  ``alpha = 1`` is distillation
    only (the Minitron recipe).  ``teacher_topk > 0`` precomputes the
    teacher's top-k next-token log-probabilities to disk first (see
    ``compress.recovery.teacher``) and distils from them.

    Learning rate: AdamW (betas, weight decay on matrices only), peak ``lr``,
    linear warm-up over ``warmup_fraction`` of the steps, then ``"wsd"``
    (stable, then a linear decay over the last ``decay_fraction``),
    ``"cosine"`` or ``"constant"``, down to ``min_lr_ratio * lr``.

    Evaluation on held-out sequences every ``eval_every`` steps (0: only
    before and after); with ``patience > 0`` training stops after that many
    evaluations without an improvement of the held-out loss larger than
    ``min_delta``, and ``keep_best`` puts back the best weights.

    Checkpoints every ``checkpoint_every`` steps under
    ``output_dir/checkpoints``; ``resume=True`` continues from the newest one
    (and starts afresh when there is none), ending bit-exactly where an
    uninterrupted run ends on the CPU.

    LoRA (``lora_rank > 0``): only low-rank adapters train, on
    ``lora_targets`` (names or regexes; empty: every projection inside the
    decoder layers), merged into the weights at the end when ``merge_lora``.

    QAT (a model prepared with ``compress.quantization.prepare_qat``): the
    fake-quant factor lambda ramps as ``min(step / qat_warmup_steps, 1)``
    (BitNet's conversion recipe uses 1000 steps; 0 means 1 from the start),
    and ``convert_qat`` packs the modules at the end (after merging LoRA).

    Several processes (torchrun): ``distributed="ddp"`` keeps the whole model
    on every process, ``"fsdp"`` shards parameters, gradients and optimizer
    state over them (torch's ``fully_shard``, layer by layer); ``"auto"``
    takes FSDP for models of ``compress.recovery.fsdp.AUTO_FSDP_PARAMS`` (1e9)
    parameters or more.  One process ignores it.

    ``precision``: ``"auto"`` is bf16 autocast on CUDA and on CPUs that
    multiply bf16 natively (AMX or AVX512-BF16; ``compress.machine.cpu_bf16``),
    fp32 on other CPUs (where bf16 is emulated, and slower than fp32).  On
    SmolLM2-135M a distillation step took 2.3x less time under it on such a
    CPU, and 40 steps after a 20% prune ended at the same KL to the original
    as fp32 on both domains (README, Recovery training).  ``"fp32"`` or
    ``"bf16"`` force one.
    ``seed`` seeds a private random state (LoRA init, dropout); the caller's
    global random state is left as it was.
    """

    steps: int | None = None
    tokens: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    schedule: str = "wsd"
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.0
    # 0: short recoveries start from trained weights, and decay on QAT latent
    # weights flips ternary codes (BitNet FAQ).
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    temperature: float = 1.0
    alpha: float = 1.0
    teacher_topk: int = 0
    hidden_weight: float = 0.0
    eval_every: int = 100
    eval_sequences: int | None = 64
    patience: int = 0
    min_delta: float = 0.0
    keep_best: bool = True
    output_dir: str | None = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 1
    resume: bool = False
    seed: int = 0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    merge_lora: bool = True
    qat_warmup_steps: int = 0
    convert_qat: bool = True
    precision: str = "auto"
    distributed: str = "auto"
    device: str | None = None
    progress: bool = True
    log_every: int = 1
    plot: bool = False

    def __post_init__(self) -> None:
        if self.steps is not None and self.tokens is not None:
            raise ConfigError(f"give steps or tokens, not both (got steps={self.steps}, tokens={self.tokens}).")
        for name in ("steps", "tokens"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be an integer of at least 1, got {value!r}.")
        for name in ("eval_every", "patience", "checkpoint_every", "lora_rank", "qat_warmup_steps", "teacher_topk", "seed"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer (0 turns it off), got {value!r}.")
        if self.eval_sequences is not None and (not _is_int(self.eval_sequences) or self.eval_sequences < 1):
            raise ConfigError(f"eval_sequences must be at least 1 (or None for all), got {self.eval_sequences!r}.")
        if not (_finite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}.")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {self.schedule!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {self.precision!r}.")
        if self.distributed not in DISTRIBUTED:
            raise ConfigError(f"distributed must be one of {', '.join(map(repr, DISTRIBUTED))}, got {self.distributed!r}.")
        for name in ("warmup_fraction", "decay_fraction", "min_lr_ratio", "alpha"):
            value = getattr(self, name)
            if not (_finite(value) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be between 0 and 1, got {value!r}.")
        if self.schedule == "wsd" and self.warmup_fraction + self.decay_fraction > 1.0:
            raise ConfigError(
                f"warmup_fraction + decay_fraction must not exceed 1 for the wsd schedule, got "
                f"{self.warmup_fraction} + {self.decay_fraction}."
            )
        if not (_finite(self.lora_dropout) and 0.0 <= self.lora_dropout < 1.0):
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        for name in ("weight_decay", "grad_clip", "min_delta"):
            value = getattr(self, name)
            if not (_finite(value) and value >= 0):
                raise ConfigError(f"{name} must be a non-negative number (0 turns it off), got {value!r}.")
        if not (_finite(self.hidden_weight) and self.hidden_weight >= 0):
            raise ConfigError(f"hidden_weight must be a non-negative number (0 turns the hidden-state term off), "
                              f"got {self.hidden_weight!r}.")
        if self.hidden_weight and self.teacher_topk:
            raise ConfigError("hidden_weight needs the teacher's hidden states on the fly, which teacher_topk's stored "
                              "logits do not keep; set teacher_topk=0 or hidden_weight=0.")
        if not (_finite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be a positive number, got {self.temperature!r}.")
        if not (_finite(self.lora_alpha) and self.lora_alpha > 0):
            raise ConfigError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}.")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(_finite(b) and 0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}.")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        targets = (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)
        if not all(isinstance(t, str) and t for t in targets):
            raise ConfigError(f"lora_targets must be module names or regexes, got {self.lora_targets!r}.")
        object.__setattr__(self, "lora_targets", targets)
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ConfigError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {self.device!r}.") from None
        if self.output_dir is not None:
            object.__setattr__(self, "output_dir", str(Path(self.output_dir).expanduser()))
        if self.resume and self.output_dir is None:
            raise ConfigError("resume=True needs output_dir, the directory whose checkpoints the run continues from.")
        if self.plot and self.output_dir is None:
            raise ConfigError("plot=True writes loss.png into output_dir; give output_dir.")

    # -- derived ----------------------------------------------------------
    def total_steps(self, tokens_per_step: int) -> int:
        """Optimiser steps the budget allows (a token budget rounds up to whole steps)."""
        if self.tokens is not None:
            return max(1, math.ceil(self.tokens / tokens_per_step))
        return self.steps if self.steps is not None else DEFAULT_STEPS

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["lora_targets"] = list(self.lora_targets)
        return d

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """``field: saved -> now`` for every field (resume-exempt ones aside) that differs from ``saved``."""
        now = self.to_dict()
        out = []
        for key in sorted(set(now) | set(saved)):
            if key in RESUME_EXEMPT:
                continue
            if now.get(key, "<absent>") != saved.get(key, "<absent>"):
                out.append(f"{key}: {saved.get(key, '<absent>')!r} -> {now.get(key, '<absent>')!r}")
        return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
