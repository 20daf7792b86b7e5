"""Held-out evaluation during recovery, shared out over the processes, and early stopping."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.eval import EvalConfig, evaluate
from compress.recovery import distributed as D
from compress.recovery.batches import shard
from compress.recovery.config import RecoverConfig
from compress.recovery.fsdp import gathered


@torch.no_grad()
def evaluate_heldout(
    model: nn.Module,
    seqs: torch.Tensor,
    teacher: nn.Module | None,
    step: int,
    batch_size: int,
    info: D.DistInfo,
    device: torch.device,
    lockstep: bool = False,
) -> dict[str, Any]:
    """Held-out CE (and KL / top-1 agreement to an in-memory teacher) at ``step``.

    Each rank evaluates every ``world``-th sequence with ``compress.eval``;
    token-weighted sums are all-reduced, so every rank gets the same numbers
    (and takes the same early-stopping decision).  ``lockstep``: the model's
    forward is a collective (FSDP), so every rank runs as many forwards as
    the rank with the most sequences, a rank without any left running a
    discarded one; the numbers are computed here, as ``compress.eval``
    defines them, since its size statistics do not take sharded tensors.
    """
    mine = shard(seqs, info.rank, info.world)
    sums = torch.zeros(4, dtype=torch.float64)
    was = model.training
    model.eval()  # no dropout while measuring
    try:
        if not lockstep:
            if len(mine):
                sums += _sums(model, mine, teacher, batch_size)
        else:
            most = math.ceil(len(seqs) / info.world)  # rank 0's share
            for start in range(0, most, batch_size):
                chunk = mine[start : start + batch_size]
                logits = model(input_ids=(chunk if len(chunk) else seqs[:1]).to(device)).logits
                if len(chunk):
                    sums += _logit_sums(logits, teacher, chunk.to(device))
    finally:
        model.train(was)
    sums = D.all_reduce_sum(sums, info, device)
    loss = float(sums[0] / sums[3])
    ref = teacher is not None
    return {"step": step, "loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "kl": float(sums[1] / sums[3]) if ref else None, "top1": float(sums[2] / sums[3]) if ref else None}


def _sums(model: nn.Module, seqs: torch.Tensor, teacher: nn.Module | None, batch_size: int) -> torch.Tensor:
    """Token-weighted (loss, KL, top-1, tokens) of ``seqs``."""
    rep = evaluate(model, seqs, reference=teacher, config=EvalConfig(batch_size=batch_size, max_sequences=None, progress=False))
    n = seqs.shape[0] * (seqs.shape[1] - 1)
    kl, top1 = rep.kl_to_reference or 0.0, rep.top1_agreement or 0.0
    return torch.tensor([rep.model.loss * n, kl * n, top1 * n, n], dtype=torch.float64)


def _logit_sums(logits: torch.Tensor, teacher: nn.Module | None, ids: torch.Tensor) -> torch.Tensor:
    """(NLL, KL(teacher || model), top-1 agreement, tokens) summed over the next-token predictions of ``ids``."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).flatten(0, 1)
    targets = ids[:, 1:].reshape(-1)
    nll = F.nll_loss(logp, targets, reduction="sum").item()
    kl = agree = 0.0
    if teacher is not None:
        ref = F.log_softmax(teacher(input_ids=ids).logits[:, :-1].float(), dim=-1).flatten(0, 1)
        kl = (ref.exp() * (ref - logp)).sum(-1).clamp_min(0).sum().item()
        agree = (logp.argmax(-1) == ref.argmax(-1)).sum().item()
    return torch.tensor([nll, kl, agree, len(targets)], dtype=torch.float64)


class EarlyStop:
    """Best held-out loss so far, evaluations without improvement, and (optionally) the best weights."""

    def __init__(self, cfg: RecoverConfig) -> None:
        self.cfg = cfg
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self.best_eval: dict[str, Any] | None = None
        self.bad = 0
        self.stopped = False
        self.best_params: dict[str, torch.Tensor] | None = None

    def update(self, ev: dict[str, Any], params: dict[str, torch.Tensor]) -> None:
        cfg = self.cfg
        if self.best_loss is None or ev["loss"] < self.best_loss - cfg.min_delta:
            self.best_loss, self.best_step, self.best_eval, self.bad = ev["loss"], ev["step"], ev, 0
            if cfg.patience and cfg.keep_best:
                self.best_params = gathered(params)  # every rank: sharded parameters are all-gathered
        else:
            self.bad += 1
            self.stopped = bool(cfg.patience) and self.bad >= cfg.patience

    def state(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "best_eval": self.best_eval,
                "bad": self.bad, "stopped": self.stopped}

    def restore(self, state: dict[str, Any], best: dict[str, torch.Tensor] | None) -> None:
        self.best_loss, self.best_step = state.get("best_loss"), state.get("best_step")
        self.best_eval, self.bad, self.stopped = state.get("best_eval"), state.get("bad", 0), state.get("stopped", False)
        self.best_params = best
