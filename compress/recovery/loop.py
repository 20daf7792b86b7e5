"""``recover``: the training loop that brings a pruned and/or quantised model back toward its teacher.

One loop for one process and for several (torchrun / ``accelerate launch``):
each optimiser step consumes one global batch of the data stream
(``batches.py``), each rank its own slice, DDP averaging the gradients, or
FSDP (``fsdp.py``) averaging them into each rank's shard of a sharded copy
of the model whose weights go back into the caller's model at the end.
Everything that decides the weights (data position, learning rate, QAT
lambda) is a function of the step, and the random state is private, seeded
from the config, and checkpointed; so a resumed run ends where an
uninterrupted one ends.
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from compress.arch import is_causal_lm
from compress.errors import ConfigError
from compress.io.fingerprint import model_difference, model_fingerprint, model_tensors
from compress.machine import uses_bf16
from compress.quantization.qat import FakeQuantLinear, set_qat_lambda
from compress.recovery import distributed as D
from compress.recovery import fsdp
from compress.recovery.batches import DataOrder, micro_batch_start, prepare_data
from compress.recovery.config import RecoverConfig, RecoverError
from compress.recovery.heldout import EarlyStop, evaluate_heldout
from compress.recovery.lora import add_lora, lora_target_names, merge_lora
from compress.recovery.objective import Objective
from compress.recovery.report import RecoverReport
from compress.recovery.runlog import PLOT, Progress, RunLog
from compress.recovery.schedule import lr_factor, qat_lambda
from compress.recovery.state import (
    latest_checkpoint,
    load_checkpoint,
    optimizer_tensors,
    read_state,
    remove_stale_temporaries,
    restore_optimizer,
    restore_parameters,
    save_checkpoint,
)
from compress.recovery.teacher import INDEX, OfflineTeacher, check_teacher, precompute_teacher, vocab_size
from compress.sizes import count_parameters

TOPK_DIR = "teacher-topk"

TeacherLike = nn.Module | OfflineTeacher | str | Path | None


@dataclass
class StepInfo:
    """What ``on_step`` is told after every optimiser step."""

    step: int  # optimiser steps done so far
    total: int
    loss: float
    lr: float
    qat_lambda: float | None
    tokens: int
    checkpoint: str | None  # written at this step, if any


def recover(
    model: nn.Module,
    teacher: TeacherLike = None,
    data: Any = None,
    config: RecoverConfig | None = None,
    *,
    eval_data: Any = None,
    on_step: Callable[[StepInfo], None] | None = None,
    **overrides: Any,
) -> RecoverReport:
    """Train ``model`` in place toward ``teacher`` (or on next-token loss without one).

    ``teacher``: the uncompressed model, an ``OfflineTeacher`` / directory
    written by ``precompute_teacher``, or None.  ``data``: a ``TextSplits``
    (``train`` for training, ``eval`` held out) or token ids ``[n, seq_len]``
    (then ``eval_data`` for the held-out part).  LoRA adapters are merged and
    fake-quantised modules converted to packed ``QuantLinear`` at the end as
    ``config`` says.  Under torchrun the same call trains with DDP or FSDP
    (``config.distributed``); only rank 0 writes files.  ``on_step`` is
    called after every step (after that step's checkpoint); an exception
    from it stops the run, as a kill would.
    Keyword ``overrides`` change fields of ``config``
    (``recover(m, t, data, steps=200, lora_rank=8)``).
    """
    config = config if config is not None else RecoverConfig()
    if not isinstance(config, RecoverConfig):
        raise ConfigError(f"config must be a RecoverConfig, got {type(config).__name__}.")
    if overrides:
        known = {f.name for f in dataclasses.fields(RecoverConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown RecoverConfig fields {unknown}; known ones are {sorted(known)}.")
        config = dataclasses.replace(config, **overrides)
    for what, m in (("model", model), ("teacher", teacher)):
        if isinstance(m, tuple) and m and isinstance(m[0], nn.Module):
            raise RecoverError(f"The {what} is a (model, tokenizer) pair; pass the model alone (load_model returns both).")
    if not isinstance(model, nn.Module):
        raise RecoverError(f"recover() trains a torch model, got {type(model).__name__}.")
    if not is_causal_lm(model):
        raise RecoverError("recover() trains causal language models (next-token distillation); this model is an encoder.")
    info = D.setup_distributed()
    try:
        return _Run(model, teacher, data, eval_data, config, info, on_step).run()
    finally:
        D.shutdown(info)


class _Run:
    def __init__(self, model, teacher, data, eval_data, config: RecoverConfig, info: D.DistInfo, on_step) -> None:
        self.model, self.teacher_arg, self.cfg, self.info, self.on_step = model, teacher, config, info, on_step
        self.data_arg, self.eval_arg = data, eval_data
        self.notes: list[str] = []

    # -- set-up ------------------------------------------------------------
    def run(self) -> RecoverReport:
        cfg, info = self.cfg, self.info
        self.t0 = time.perf_counter()
        self.device = self._device()
        self.bf16 = uses_bf16(cfg.precision, self.device)  # decided once: the CPU probe need not run every step
        self.strategy = fsdp.choose_strategy(cfg.distributed, count_parameters(self.model)[0], info.world)
        if self.strategy != "fsdp":  # FSDP trains a sharded copy on the device; the model follows at the end
            self.model.to(self.device)
        self.data = prepare_data(self.data_arg, self.eval_arg, vocab_size(self.model), cfg.eval_sequences)
        if cfg.patience and self.data.eval is None:
            raise RecoverError("Early stopping (patience > 0) needs held-out data: pass TextSplits or eval_data.")
        if cfg.lora_rank:
            lora_target_names(self.model, cfg.lora_targets)  # refuse packed or missing targets before any work
        if cfg.eval_every and self.data.eval is None:
            self.notes.append("no held-out data was given: no evaluations ran (pass TextSplits or eval_data).")
        self.global_batch = cfg.batch_size * cfg.grad_accum * info.world
        self.total = cfg.total_steps(self.global_batch * self.data.seq_len)
        self.teacher, self.offline = self._teacher()
        self.objective = Objective(cfg, self.teacher, self.offline, self._autocast, self.device)
        self.resume_from = self._checkpoint_to_resume()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the caller's random state is left untouched
            torch.manual_seed(cfg.seed + info.rank)
            return self._train()

    def _device(self) -> torch.device:
        if self.cfg.device:
            return torch.device(self.cfg.device)
        current = next(self.model.parameters()).device
        if current.type == "cuda" and not self.info.enabled:
            return current
        if torch.cuda.is_available():
            return torch.device("cuda", self.info.local_rank if self.info.enabled else torch.cuda.current_device())
        return torch.device("cpu")

    def _autocast(self) -> ContextManager[Any]:
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _teacher(self) -> tuple[nn.Module | None, OfflineTeacher | None]:
        cfg, t, data = self.cfg, self.teacher_arg, self.data
        if t is None:
            if cfg.teacher_topk:
                raise RecoverError("teacher_topk > 0 distils from a teacher's top-k logits, but no teacher was given.")
            return None, None
        if isinstance(t, (str, Path)):
            t = OfflineTeacher(t)
        if isinstance(t, OfflineTeacher):
            t.check(data.train, data.fingerprint, vocab_size(self.model), cfg.temperature)
            return None, t
        if not isinstance(t, nn.Module):
            raise RecoverError(f"teacher must be a model, an OfflineTeacher or a top-k directory, got {type(t).__name__}.")
        check_teacher(self.model, t)
        t.to(self.device).eval()
        if not cfg.teacher_topk:
            return t, None
        if not cfg.output_dir:
            raise RecoverError(f"teacher_topk > 0 stores the teacher's top-k logits in output_dir/{TOPK_DIR}; give output_dir.")
        path = Path(cfg.output_dir) / TOPK_DIR
        if (path / INDEX).is_file():  # a resumed run reuses them
            try:
                offline = OfflineTeacher(path)
                offline.check(data.train, data.fingerprint, vocab_size(self.model), cfg.temperature)
                if offline.k == cfg.teacher_topk:
                    return t, offline
            except RecoverError:
                pass
        offline = precompute_teacher(t, data.train, path, k=cfg.teacher_topk, temperature=cfg.temperature,
                                     batch_size=cfg.batch_size, overwrite=True, progress=cfg.progress,
                                     autocast=self._autocast, dist_info=self.info)
        return t, offline  # the model stays for held-out KL only

    def _checkpoint_to_resume(self) -> Path | None:
        cfg = self.cfg
        if not cfg.output_dir:
            self.fingerprint = self.tensors = None
            return None
        if self.info.is_main:
            remove_stale_temporaries(cfg.output_dir)
        D.barrier(self.info)
        self.fingerprint = model_fingerprint(self.model)  # before LoRA: the model as the caller gave it
        self.tensors = model_tensors(self.model)
        path = latest_checkpoint(cfg.output_dir)
        if path is None:
            return None
        if not cfg.resume:
            raise RecoverError(
                f"'{cfg.output_dir}' holds checkpoints of an earlier run (newest: {path.name}); pass resume=True "
                f"(--resume) to continue it, or choose another output_dir."
            )
        state = read_state(path)
        diffs = cfg.differences(state.get("config", {}))
        elsewhere = "or use another output_dir (compress-lm recover: --state-dir, or --force to start over)"
        if diffs:
            raise RecoverError(
                f"Checkpoint '{path}' was made with another config ({'; '.join(diffs)}); resume with the same "
                f"settings, {elsewhere}."
            )
        if state.get("model_fingerprint") != self.fingerprint:
            difference = model_difference(state.get("model_tensors"), self.tensors)
            raise RecoverError(
                f"Checkpoint '{path}' was made from another model ({difference}); resume with the model the run "
                f"started from, {elsewhere}."
            )
        if state.get("data_fingerprint") != self.data.fingerprint:
            raise RecoverError(
                f"Checkpoint '{path}' was made with other training data (fingerprint {state.get('data_fingerprint')}, "
                f"this data {self.data.fingerprint}); resume with the same data, {elsewhere}."
            )
        if state.get("world_size") != self.info.world:
            raise RecoverError(
                f"Checkpoint '{path}' was made on {state.get('world_size')} process(es) and this run has "
                f"{self.info.world}; the global batch would change, so resume on {state.get('world_size')}."
            )
        return path

    # -- training ----------------------------------------------------------
    def _train(self) -> RecoverReport:
        cfg, info, model = self.cfg, self.info, self.model
        was_training = model.training
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        lora = add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.lora_dropout, cfg.seed) if cfg.lora_rank else []
        self.qat = sum(isinstance(m, FakeQuantLinear) for m in model.modules())
        if self.strategy == "fsdp":
            self.train_model = fsdp.sharded_copy(model, self.device, info.world)
        else:
            self.train_model = model
        params = {n: p for n, p in self.train_model.named_parameters() if p.requires_grad}
        if not params:
            raise RecoverError("The model has no trainable parameters (all have requires_grad=False); unfreeze some or use LoRA.")
        optimizer = _adamw(params, cfg)
        log = RunLog(cfg.output_dir, {"objective": self.objective.describe(), "config": cfg.to_dict(), "world_size": info.world,
                                      "parallel": self.strategy, "total_steps": self.total}, enabled=info.is_main)
        st = EarlyStop(cfg)
        step, eval_before = 0, None
        if self.resume_from is not None:
            ck = load_checkpoint(self.resume_from)
            restore_parameters(params, ck.weights, str(self.resume_from))
            restore_optimizer(optimizer, params, ck.optimizer)
            D.set_rng_states(ck.rng, info, self.device)
            step, eval_before = ck.step, ck.state.get("eval_before")
            log.restore(ck.state.get("log", {}))
            st.restore(ck.state.get("early_stop", {}), ck.best)
        ddp = D.wrap(model, info, self.device) if self.strategy == "ddp" else self.train_model
        if step == 0 and self.data.eval is not None:
            eval_before = self._evaluate(self.train_model, 0)
            log.evals.append(eval_before)
            st.update(eval_before, params)

        order = DataOrder(len(self.data.train), cfg.seed)
        progress = Progress(self.total, step, cfg.progress and info.is_main)
        checkpoint = None
        self.train_model.train()
        try:
            while step < self.total and not st.stopped:
                lam = qat_lambda(step, cfg.qat_warmup_steps) if self.qat else None
                if lam is not None:
                    set_qat_lambda(self.train_model, lam)
                lr = cfg.lr * lr_factor(step, self.total, cfg.schedule, cfg.warmup_fraction, cfg.decay_fraction, cfg.min_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                parts = self._accumulate(ddp, order, step)
                grad_norm = None
                if cfg.grad_clip:  # a sharded model's norm is a DTensor: full_tensor makes it one number
                    grad_norm = float(fsdp.full_tensor(torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                loss, kd, ce = D.all_reduce_mean(parts, info, self.device).tolist()
                tokens = step * self.global_batch * self.data.seq_len
                rate = progress.update(self.global_batch * self.data.seq_len, loss, lr, {"lambda": f"{lam:.2f}"} if lam is not None else None)
                if step % cfg.log_every == 0 or step == self.total:
                    log.train.append(_entry(step, loss, kd, ce, lr, lam, grad_norm, tokens, rate))
                if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total and self.data.eval is not None:
                    ev = self._evaluate(self.train_model, step)
                    log.evals.append(ev)
                    st.update(ev, params)
                    progress.write(f"step {step}: held-out loss {ev['loss']:.4f}" + (f", KL {ev['kl']:.4f}" if ev.get("kl") is not None else ""))
                checkpoint = None
                if cfg.output_dir and cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == self.total or st.stopped):
                    checkpoint = self._save(step, params, optimizer, log, st, eval_before)
                    log.write()
                if self.on_step is not None:
                    self.on_step(StepInfo(step, self.total, loss, lr, lam, tokens, checkpoint))
        finally:
            progress.close()
        del optimizer, ddp  # free the training state before the model comes back whole
        return self._finish(model, params, flags, lora, log, st, step, eval_before, was_training)

    def _accumulate(self, ddp: nn.Module, order: DataOrder, step: int) -> torch.Tensor:
        """Forward and backward over this process's micro-batches of one step; the mean (loss, kd, ce)."""
        cfg, info = self.cfg, self.info
        parts = torch.zeros(3, dtype=torch.float64)
        for micro in range(cfg.grad_accum):
            start = micro_batch_start(step, micro, info.rank, cfg.batch_size, cfg.grad_accum, info.world)
            rows = order.indices(start, cfg.batch_size)
            ids = self.data.train[rows].to(self.device)
            with D.no_sync(ddp, micro < cfg.grad_accum - 1):
                with self._autocast():
                    out = ddp(input_ids=ids, output_hidden_states=self.objective.use_hidden)
                logits = out.logits[:, :-1]
                hidden = out.hidden_states[1:] if self.objective.use_hidden else None
                loss, kd, ce = self.objective(logits, ids, rows, hidden)
                (loss / cfg.grad_accum).backward()
            parts += torch.tensor([loss.item(), kd, ce], dtype=torch.float64) / cfg.grad_accum
        return parts

    def _evaluate(self, model: nn.Module, step: int) -> dict[str, Any]:
        sharded = model is not self.model  # FSDP's copy: every forward is a collective
        ev = evaluate_heldout(model, self.data.eval, self.teacher, step, self.cfg.batch_size, self.info, self.device,
                              lockstep=sharded)
        if sharded:
            fsdp.reshard(model)
        return ev

    def _save(self, step, params, optimizer, log: RunLog, st: EarlyStop, eval_before) -> str | None:
        cfg, info = self.cfg, self.info
        # collectives under FSDP (every rank gathers the shards); only rank 0 keeps the tensors
        weights = fsdp.gathered(params, keep=info.is_main)
        moments = optimizer_tensors(optimizer, params, keep=info.is_main)
        rng = D.rng_states(info, self.device)
        path = None
        if info.is_main:
            state = {"config": cfg.to_dict(), "model_fingerprint": self.fingerprint, "model_tensors": self.tensors,
                     "data_fingerprint": self.data.fingerprint,
                     "world_size": info.world, "total_steps": self.total, "log": log.state(),
                     "early_stop": st.state(), "eval_before": eval_before}
            path = str(save_checkpoint(cfg.output_dir, step, weights, moments, rng, state, st.best_params, cfg.keep_checkpoints))
        D.barrier(info)
        return path

    # -- the end -----------------------------------------------------------
    def _finish(self, model, params, flags, lora, log: RunLog, st: EarlyStop, step, eval_before, was_training) -> RecoverReport:
        cfg, info = self.cfg, self.info
        if st.stopped and cfg.keep_best and st.best_params is not None:
            restore_parameters(params, st.best_params, "the best evaluation")
            self.notes.append(f"stopped early; kept the weights of the best evaluation (step {st.best_step}).")
        if self.train_model is not model:
            fsdp.copy_back(params, model)
            self.train_model = None
            model.to(self.device)
        model.train(was_training)
        merged = False
        if lora and cfg.merge_lora:
            merge_lora(model)
            merged = True
            for n, p in model.named_parameters():
                if n in flags:
                    p.requires_grad_(flags[n])
        converted = False
        if self.qat and cfg.convert_qat:
            from compress.quantization import quantize

            last = qat_lambda(max(step - 1, 0), cfg.qat_warmup_steps)
            if last < 1:
                self.notes.append(f"QAT lambda reached only {last:.2f} (qat_warmup_steps={cfg.qat_warmup_steps} > steps); "
                                  f"the packed model is the lambda = 1 one.")
            set_qat_lambda(model, 1.0)
            quantize(model)
            converted = True
        eval_after = None
        if self.data.eval is not None:
            eval_after = {**self._evaluate(model, step), "final": True}  # after merging and packing: the model as returned
            log.evals.append(eval_after)
        if self.offline is not None and self.teacher is None and eval_after is not None:
            self.notes.append("held-out KL needs the teacher in memory; with offline top-k logits only CE is measured.")
        log.summary = {"steps": step, "eval_before": eval_before, "eval_after": eval_after, "stopped_early": st.stopped}
        log_path = str(log.write()) if info.is_main and log.path else None
        plot_path = None
        if cfg.plot and info.is_main:
            plot_path = str(log.plot(Path(cfg.output_dir) / PLOT))
        D.barrier(info)
        return RecoverReport(
            objective=self.objective.describe(), steps=step, total_steps=self.total,
            tokens=step * self.global_batch * self.data.seq_len, seconds=time.perf_counter() - self.t0,
            world_size=info.world, parallel=self.strategy, eval_before=eval_before, eval_after=eval_after, best_eval=st.best_eval,
            evals=list(log.evals), train=list(log.train), stopped_early=st.stopped,
            resumed_from=None if self.resume_from is None else int(self.resume_from.name.split("-")[-1]),
            lora_modules=len(lora), lora_merged=merged, qat_modules=self.qat, qat_converted=converted,
            log_path=log_path, plot_path=plot_path,
            checkpoint=str(latest_checkpoint(cfg.output_dir)) if cfg.output_dir and latest_checkpoint(cfg.output_dir) else None,
            notes=self.notes,
        )


def _adamw(params: dict[str, torch.Tensor], cfg: RecoverConfig) -> torch.optim.Optimizer:
    # No decay on vectors (norm gains, biases): decaying them only shrinks scales.
    decay = [p for p in params.values() if p.dim() >= 2]
    rest = [p for p in params.values() if p.dim() < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=False)


def _entry(step, loss, kd, ce, lr, lam, grad_norm, tokens, rate) -> dict[str, Any]:
    e: dict[str, Any] = {"step": step, "loss": loss, "lr": lr, "tokens": tokens, "tokens_per_s": round(rate, 1)}
    if not math.isnan(kd):
        e["kd"] = kd
    if not math.isnan(ce):
        e["ce"] = ce
    if lam is not None:
        e["qat_lambda"] = lam
    if grad_norm is not None:
        e["grad_norm"] = float(grad_norm)
    return e
