"""The training objective of one micro-batch: KD from the teacher (online or offline top-k), CE, or both."""
from __future__ import annotations

import math
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from compress.recovery.config import RecoverConfig, RecoverError
from compress.recovery.losses import ce_loss, hidden_loss, kd_loss, topk_kd_loss
from compress.recovery.teacher import OfflineTeacher


class Objective:
    """``alpha * KD + (1 - alpha) * CE`` with a teacher, CE without; see ``RecoverConfig``."""

    def __init__(
        self,
        cfg: RecoverConfig,
        teacher: nn.Module | None,
        offline: OfflineTeacher | None,
        autocast: Callable[[], ContextManager[Any]],
        device: torch.device,
    ) -> None:
        self.cfg, self.teacher, self.offline, self.autocast, self.device = cfg, teacher, offline, autocast, device
        distil = teacher is not None or offline is not None
        self.use_kd = distil and cfg.alpha > 0
        self.use_ce = not distil or cfg.alpha < 1
        self.use_hidden = cfg.hidden_weight > 0
        if self.use_hidden and teacher is None:
            raise RecoverError("hidden_weight > 0 matches the teacher's hidden states, so it needs a teacher model "
                               "(not stored top-k logits); pass teacher=... or set hidden_weight=0.")

    def describe(self) -> str:
        cfg = self.cfg
        if self.teacher is None and self.offline is None:
            return "next-token cross-entropy"
        kind = f"offline top-{self.offline.k}" if self.offline is not None else "teacher on the fly"
        text = f"distillation, KL at T={cfg.temperature:g} ({kind})"
        if cfg.alpha != 1.0:
            text = f"{text} x {cfg.alpha:g} + cross-entropy x {1 - cfg.alpha:g}"
        return text + (f" + hidden states x {cfg.hidden_weight:g}" if self.use_hidden else "")

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor,
                 hidden: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, float, float]:
        """``(loss, kd, ce)`` for student ``logits`` ``[b, L-1, V]`` of ``ids`` ``[b, L]`` (training rows
        ``rows``) and, with ``use_hidden``, the student's decoder-layer outputs ``hidden``; a term not
        computed is NaN (the hidden-state term is part of ``loss`` only)."""
        cfg = self.cfg
        kd = ce = t_hidden = None
        if self.use_hidden and hidden is None:
            raise RecoverError("hidden_weight > 0 but the student's hidden states were not passed.")
        if self.use_hidden or (self.use_kd and self.offline is None):  # one teacher forward serves both terms
            with torch.no_grad(), self.autocast():
                out = self.teacher(input_ids=ids, output_hidden_states=self.use_hidden)
            t_logits = out.logits[:, :-1]
            t_hidden = out.hidden_states[1:] if self.use_hidden else None
        if self.use_kd:
            if self.offline is not None:
                lp, ix = self.offline.lookup(rows)
                kd = topk_kd_loss(logits, lp.to(self.device), ix.to(self.device), cfg.temperature)
            else:
                if t_logits.shape[-1] != logits.shape[-1]:
                    raise RecoverError(
                        f"The teacher gives {t_logits.shape[-1]} logits per token and the student {logits.shape[-1]}; "
                        f"both must share a tokenizer."
                    )
                kd = kd_loss(logits, t_logits, cfg.temperature)
        if self.use_ce:
            ce = ce_loss(logits, ids[:, 1:])
        if kd is not None and ce is not None:
            loss = cfg.alpha * kd + (1 - cfg.alpha) * ce
        else:
            loss = kd if kd is not None else ce
        if t_hidden is not None:
            if len(hidden) != len(t_hidden) or hidden[0].shape[-1] != t_hidden[0].shape[-1]:
                raise RecoverError(
                    f"hidden_weight matches decoder-layer outputs, but the student has {len(hidden)} layers of width "
                    f"{hidden[0].shape[-1]} and the teacher {len(t_hidden)} of width {t_hidden[0].shape[-1]}; "
                    f"set hidden_weight=0 for a student with dropped layers or a narrower hidden size."
                )
            loss = loss + cfg.hidden_weight * hidden_loss(hidden, t_hidden)
        return loss, _item(kd), _item(ce)


def _item(t: torch.Tensor | None) -> float:
    return math.nan if t is None else t.item()
