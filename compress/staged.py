"""Adapt-Accel: prune in stages with distillation between them (ALGORITHMS.md §1.5).

Stage k of T is a whole Adapt-Pruner call (widths at its start are its
``C_init``, ``s_l`` starts at 0) that stops when the non-embedding parameters
reach ``N0 * (1 - sparsity * k / T)``, so the count falls linearly; then the
model trains on its own shard of the training split, by distillation from a
frozen copy of the unpruned model.  As in the released scripts, every stage
starts a fresh optimiser, and one warm-up/stable/decay schedule runs across
all stages: each stage's ``recover`` call runs its piece of it.

It composes two capabilities, so it sits above both: ``compress.prune``
(the API verb) sends ``stages > 1`` here, and neither ``compress.pruning.*``
nor ``compress.recovery.*`` imports this module.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.arch import Adapter, adapter_for
from compress.errors import CompressError
from compress.pruning.config import PruneConfig
from compress.pruning.pruner import calibration_tokens, check_budget, check_model, prune_once
from compress.pruning.report import LayerWidths, PruneReport, StageReport
from compress.recovery.config import RecoverConfig
from compress.recovery.loop import recover
from compress.sizes import count_parameters


# -- the schedule, as plain numbers ------------------------------------------

def stage_targets(non_embedding: int, sparsity: float, stages: int) -> list[float]:
    """Non-embedding parameter count each stage prunes down to: a linear fall to the final budget."""
    return [non_embedding * (1.0 - sparsity * k / stages) for k in range(1, stages + 1)]


def stage_token_budgets(stages: int, stage_tokens: int, split: str) -> list[int]:
    """Training tokens of each stage, ``stages * stage_tokens`` in all.

    ``"linear"``: stage k gets ``2k / (T (T + 1))`` of the total (Adapt-Accel's
    ``seperate_strategy linear``); ``"equal"``: ``stage_tokens`` each.
    """
    if split == "equal":
        return [stage_tokens] * stages
    total = stages * stage_tokens
    return [max(1, round(total * 2 * k / (stages * (stages + 1)))) for k in range(1, stages + 1)]


@dataclass(frozen=True)
class StageSchedule:
    """One stage's piece of the global learning-rate schedule, in RecoverConfig's terms."""

    lr_scale: float  # the stage's peak as a fraction of the global peak
    warmup_fraction: float
    decay_fraction: float
    min_lr_ratio: float  # relative to the stage's peak


def stage_schedules(
    budgets: Sequence[int], schedule: str, warmup_fraction: float, decay_fraction: float, min_lr_ratio: float
) -> list[StageSchedule]:
    """Cut one global schedule over ``sum(budgets)`` tokens into per-stage ``recover`` schedules.

    Decay is exact: a stage inside the global decay runs from the global
    factor at its start down to the one at its end.  Warm-up restarts from
    zero in each stage that overlaps the global warm-up (the optimiser is new
    there too); with the released setting (5% warm-up) only the first stage
    or first few do.
    """
    total = float(sum(budgets))
    warm_end = warmup_fraction * total
    decay_start = total - (decay_fraction * total if schedule == "wsd" else 0.0)

    def factor(x: float) -> float:  # the global decay factor at token x
        if x <= decay_start or total <= decay_start:
            return 1.0
        return 1.0 - (1.0 - min_lr_ratio) * (x - decay_start) / (total - decay_start)

    out, start = [], 0.0
    for tokens in budgets:
        end = start + tokens
        warm = min(max((warm_end - start) / tokens, 0.0), 1.0)
        decay = min(max((end - max(start, decay_start)) / tokens, 0.0), 1.0)
        warm = min(warm, 1.0 - decay)  # a stage holding both the warm-up's end and the decay's start
        peak = factor(start)
        out.append(StageSchedule(peak, warm, decay, factor(end) / peak if decay else 1.0))
        start = end
    return out


def shard_rows(n_rows: int, seq_len: int, budgets: Sequence[int]) -> list[torch.Tensor]:
    """Consecutive training rows for each stage (one pass over new text; wraps when the text runs out)."""
    out, start = [], 0
    for tokens in budgets:
        rows = max(1, math.ceil(tokens / seq_len))
        out.append((start + torch.arange(rows)) % n_rows)
        start += rows
    return out


# -- the staged run -------------------------------------------------------------

def prune_staged(model: nn.Module, config: PruneConfig, data: Any) -> PruneReport:
    """Check ``model`` and ``config`` as a one-shot prune would, then ``prune_in_stages``."""
    adapter = adapter_for(model)
    check_model(adapter, config)
    return prune_in_stages(model, adapter, config, calibration_tokens(config, data, adapter), data)


def prune_in_stages(
    model: nn.Module, adapter: Adapter, cfg: PruneConfig, calibration: torch.Tensor | None, data: Any
) -> PruneReport:
    """Prune ``model`` in ``cfg.stages`` stages, training between them; the combined report."""
    train, held_out = _training_splits(data, adapter)
    check_budget(model, adapter, cfg, calibration)  # the whole plan, before any weight moves
    template = cfg.recover if cfg.recover is not None else RecoverConfig(eval_every=0, eval_sequences=16)
    total0, non_emb0 = count_parameters(model)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the unpruned model, frozen

    targets = stage_targets(non_emb0, cfg.sparsity, cfg.stages)
    budgets = stage_token_budgets(cfg.stages, cfg.stage_tokens, cfg.stage_split)
    schedule = "wsd" if template.schedule == "wsd" else "constant"
    pieces = stage_schedules(budgets, schedule, template.warmup_fraction, template.decay_fraction, template.min_lr_ratio)
    shards = shard_rows(len(train), train.shape[1], budgets)

    reports: list[PruneReport] = []
    stages: list[StageReport] = []
    notes: list[str] = []
    for k in tqdm(range(cfg.stages), desc="Adapt-Accel stages", disable=not cfg.progress):
        t0 = time.perf_counter()
        _, now = count_parameters(model)
        pruned = None
        if now > targets[k]:
            stage_cfg = replace(cfg, sparsity=1.0 - targets[k] / now, stages=1, stage_tokens=None,
                                recover=None, seed=cfg.seed + k)
            pruned = prune_once(model, adapter, stage_cfg, calibration)
            reports.append(pruned)
        else:
            notes.append(f"Stage {k + 1} pruned nothing: earlier rounding had already reached its target.")
        _, after = count_parameters(model)
        piece = pieces[k]
        rc = replace(template, steps=None, tokens=budgets[k], lr=template.lr * piece.lr_scale, schedule=schedule,
                     warmup_fraction=piece.warmup_fraction, decay_fraction=piece.decay_fraction,
                     min_lr_ratio=piece.min_lr_ratio, seed=template.seed + k,
                     progress=cfg.progress and template.progress)
        trained = recover(model, teacher, train[shards[k]], rc, eval_data=held_out)
        stages.append(_stage_report(k, targets[k], after, non_emb0, pruned, trained, rc.lr, time.perf_counter() - t0))
    del teacher
    return _combine(cfg, reports, stages, notes, model, total0, non_emb0)


def _training_splits(data: Any, adapter: Adapter) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``train`` split (and ``eval`` if there is one), checked before any weight changes."""
    train = getattr(data, "train", None)
    if not isinstance(train, torch.Tensor):
        raise CompressError(
            "Incremental pruning (stages > 1) trains between stages and needs a TextSplits with a train split "
            "(compress.load_text(files, tokenizer)), not bare calibration token ids."
        )
    if train.ndim != 2 or train.shape[0] == 0 or train.shape[1] < 2:
        raise CompressError(
            f"The training split has shape {tuple(train.shape)}; incremental pruning needs at least one sequence "
            "of 2 or more tokens; give more text."
        )
    vocab = adapter.embed.num_embeddings
    if train.dtype.is_floating_point or int(train.min()) < 0 or int(train.max()) >= vocab:
        raise CompressError(f"The training split must hold token ids in [0, {vocab}), the model's vocabulary.")
    held_out = getattr(data, "eval", None)
    return train.long(), held_out if isinstance(held_out, torch.Tensor) and held_out.numel() else None


def _stage_report(
    k: int, target: float, after: int, non_emb0: int, pruned: PruneReport | None, trained: Any, lr: float, seconds: float
) -> StageReport:
    before_eval, after_eval = trained.eval_before or {}, trained.eval_after or {}
    losses = [e["loss"] for e in trained.train]
    return StageReport(
        stage=k + 1,
        non_embedding_target=int(target),
        non_embedding_after=after,
        achieved_sparsity=1.0 - after / non_emb0,
        substeps=pruned.substeps if pruned else 0,
        calibration_tokens=pruned.calibration_tokens if pruned else 0,
        train_tokens=trained.tokens,
        train_steps=trained.steps,
        peak_lr=lr,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        perplexity_before=before_eval.get("perplexity"),
        perplexity_after=after_eval.get("perplexity"),
        kl_before=before_eval.get("kl"),
        kl_after=after_eval.get("kl"),
        seconds=seconds,
    )


def _combine(
    cfg: PruneConfig, reports: list[PruneReport], stages: list[StageReport], notes: list[str],
    model: nn.Module, total0: int, non_emb0: int,
) -> PruneReport:
    """One report for the whole call: widths from before the first stage to after the last."""
    first, last = reports[0], reports[-1]
    rows = []
    for i, (a, b) in enumerate(zip(first.layers, last.layers)):
        kept = math.prod(1.0 - r.layers[i].sparsity for r in reports)
        rows.append(LayerWidths(
            index=a.index, source=a.source, heads=(a.heads[0], b.heads[1]), kv_heads=(a.kv_heads[0], b.kv_heads[1]),
            mlp=(a.mlp[0], b.mlp[1]), sparsity=1.0 - kept, params=(a.params[0], b.params[1]),
        ))
    total1, non_emb1 = count_parameters(model)
    return PruneReport(
        method=cfg.method,
        importance=cfg.importance,
        target_sparsity=cfg.sparsity,
        params_before=total0,
        params_after=total1,
        non_embedding_before=non_emb0,
        non_embedding_after=non_emb1,
        layers=rows,
        protected_layers=last.protected_layers,
        uniform=last.uniform,
        substeps=sum(r.substeps for r in reports),
        calibration_tokens=sum(r.calibration_tokens for r in reports),
        refitted=sum(r.refitted for r in reports),
        skipped=[*last.skipped, *notes,
                 f"{cfg.stages} stages, each trained by distillation from a frozen copy of the unpruned model; "
                 "s_l is the compound of the stages' allocations."],
        stages=stages,
    )
