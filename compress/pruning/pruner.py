"""``prune``: check the whole plan, then alternate calibration, allocation and surgery.

Each sub-step (Adapt-Pruner, ALGORITHMS.md §1.3): measure layer importance on
fresh calibration windows, move every layer's target sparsity by the update
rule, then remove the lowest-scoring MLP channels and whole kv groups down to
the new widths.  The last sub-step is shortened so the parameter count lands
on the budget.  Calibration is skipped when the previous sub-step removed
nothing, since the model (and so every score) is unchanged.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import fields, replace
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.arch import Adapter, LayerParts, adapter_for
from compress.errors import CompressError, ConfigError
from compress.output_kl import KLProbe
from compress.pruning import allocation as alloc
from compress.pruning.calibrate import Calibration, calibrate, calibration_rows, check_in_vocabulary, sample_windows
from compress.pruning.config import PruneConfig
from compress.pruning.groups import LayerGroups, layer_groups
from compress.pruning.problems import layer_budget, prune_problems, unreachable
from compress.pruning.refit import Snapshot, refit_outputs
from compress.pruning.report import LayerWidths, PruneReport
from compress.pruning.scores import kv_group_scores, mlp_channel_scores, top_k
from compress.pruning.surgery import (
    drop_layers,
    prune_attention,
    prune_mlp,
    record_widths,
    source_layers,
)
from compress.sizes import count_parameters


def resolve_config(config_or_sparsity: PruneConfig | float | None, overrides: dict[str, Any]) -> PruneConfig:
    """A ``PruneConfig`` from a config, a bare sparsity or nothing, plus keyword overrides."""
    names = {f.name for f in fields(PruneConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"Unknown prune option(s) {', '.join(unknown)}; valid ones are {', '.join(sorted(names))}.")
    if isinstance(config_or_sparsity, PruneConfig):
        return replace(config_or_sparsity, **overrides) if overrides else config_or_sparsity
    if config_or_sparsity is None:
        return PruneConfig(**overrides)
    if "sparsity" in overrides:
        raise ConfigError("sparsity was given twice, positionally and as a keyword; give it once.")
    return PruneConfig(sparsity=config_or_sparsity, **overrides)


def prune(
    model: nn.Module,
    config_or_sparsity: PruneConfig | float | None = None,
    data: Any = None,
    **kwargs: Any,
) -> PruneReport:
    """Prune ``model`` in place (channels, kv groups, optionally layers) and report what changed.

    ``data``: calibration token ids ``[n, seq_len]`` (or a ``TextSplits``, whose
    ``calibration`` split is used); needed by every setting but uniform
    magnitude pruning without layer dropping.  ``stages > 1`` (prune and
    train in turns) is ``compress.staged``'s, reached through ``compress.prune``.
    """
    cfg = resolve_config(config_or_sparsity, kwargs)
    adapter = adapter_for(model)
    check_model(adapter, cfg)
    tokens = calibration_tokens(cfg, data, adapter)
    if cfg.stages > 1:
        raise ConfigError(
            f"stages={cfg.stages} (Adapt-Accel) trains between pruning stages, which pruning alone does not do; "
            "call compress.prune(model, config, data) or compress.staged.prune_in_stages instead."
        )
    return prune_once(model, adapter, cfg, tokens)


def prune_once(model: nn.Module, adapter: Adapter, cfg: PruneConfig, tokens: torch.Tensor | None) -> PruneReport:
    """One Adapt-Pruner (or uniform) call on checked inputs; ``cfg.stages`` is not looked at."""
    return _Pruning(model, adapter, cfg, tokens).run()


def check_budget(model: nn.Module, adapter: Adapter, cfg: PruneConfig, tokens: torch.Tensor | None) -> None:
    """Raise if ``cfg.sparsity`` cannot be met without dropping layers; touches no weight."""
    _Pruning(model, adapter, cfg, tokens).check_budget()


def check_model(adapter: Adapter, cfg: PruneConfig) -> None:
    """Raise one ``CompressError`` with every problem ``compress.pruning.problems`` finds; touches no weight."""
    found, _ = prune_problems(adapter.model, cfg, adapter=adapter)
    if found:
        raise CompressError(" ".join(p if p.endswith(".") else p + "." for p in found))


def calibration_tokens(cfg: PruneConfig, data: Any, adapter: Adapter) -> torch.Tensor | None:
    """Validate ``data`` as calibration token ids; None when the config needs none."""
    if data is None:
        if not cfg.needs_data:
            return None
        why = (
            "Adapt-Pruner's layer importance" if cfg.method == "adapt"
            else f"importance='{cfg.importance}'" if cfg.importance != "magnitude"
            else "drop_layers"
        )
        raise CompressError(
            f"{why} needs calibration text: pass data= as token ids [n, seq_len] or a TextSplits "
            "(compress.load_text), or use method='uniform' with importance='magnitude'."
        )
    data = calibration_rows(data)
    if data.shape[0] == 0:
        raise CompressError("Calibration data has no sequences; give at least one.")
    seq_len = cfg.calib_seq_len or data.shape[1]
    if data.shape[1] < seq_len:
        raise CompressError(
            f"Calibration sequences are {data.shape[1]} tokens long, shorter than calib_seq_len={seq_len}; "
            "give longer text or lower calib_seq_len."
        )
    check_in_vocabulary(data, adapter.embed.num_embeddings)
    return data.long()


class _Pruning:
    """One prune call's state: the model, its initial widths and the allocation so far."""

    def __init__(self, model: nn.Module, adapter: Adapter, cfg: PruneConfig, tokens: torch.Tensor | None):
        self.model, self.adapter, self.cfg, self.tokens = model, adapter, cfg, tokens
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.seq_len = cfg.calib_seq_len or (tokens.shape[1] if tokens is not None else 0)
        self.calib_tokens = 0
        self.notes: list[str] = []
        self.last_windows: torch.Tensor | None = None  # the latest calibration's windows, for kv_loss_windows

    # -- calibration --------------------------------------------------------
    def calibrate(self, *, cosine: bool, scores: bool = True) -> Calibration:
        """One pass on fresh windows: layer cosines if asked, and what ``importance`` needs if ``scores``."""
        assert self.tokens is not None
        ids = sample_windows(self.tokens, self.cfg.calib_samples, self.seq_len, self.generator)
        if ids.shape[0] < self.cfg.calib_samples and not any(n.startswith("Calibration read") for n in self.notes):
            self.notes.append(  # one window per sequence: asking for more windows than sequences changes nothing
                f"Calibration read {ids.shape[0]} windows per sub-step, not calib_samples={self.cfg.calib_samples}: "
                f"the text gives {ids.shape[0]} calibration sequences and each gives one window; give more text "
                f"(or a larger calibration split) for more.")
        self.last_windows = ids[: self.cfg.kv_loss_windows]
        stats = calibrate(
            self.model, self.adapter, ids,
            cosine=cosine,
            activations=scores and self.cfg.importance == "activation",
            gradients=scores and self.cfg.importance == "taylor",
            batch_size=self.cfg.batch_size,
            progress=self.cfg.progress,
        )
        self.calib_tokens += stats.tokens
        return stats

    # -- the whole call -----------------------------------------------------
    def check_budget(self) -> None:
        """Raise if the target cannot be met without dropping layers; touches no weight."""
        _, non_emb0 = count_parameters(self.model)
        groups0 = [layer_groups(self.adapter.layer(i)) for i in range(self.adapter.num_layers)]
        kept = list(range(len(groups0)))
        self.active = [i for i in kept if i not in self.cfg.protect_layers]
        self.plan(groups0, kept, [], non_emb0, non_emb0 * (1.0 - self.cfg.sparsity))

    def run(self) -> PruneReport:
        cfg, adapter = self.cfg, self.adapter
        total0, non_emb0 = count_parameters(self.model)
        target = non_emb0 * (1.0 - cfg.sparsity)
        groups0 = [layer_groups(adapter.layer(i)) for i in range(adapter.num_layers)]

        drop = self.choose_dropped_layers() if cfg.drop_layers else []
        kept = [i for i in range(len(groups0)) if i not in drop]
        # Indices (after dropping) of the layers allocation manages: all but the protected ones.
        self.active = [new for new, old in enumerate(kept) if old not in cfg.protect_layers]
        budgets, widths, fixed = self.plan(groups0, kept, drop, non_emb0, target)
        sources = source_layers(adapter)  # before dropping: indices in the original, unpruned model
        snapshot = self.snapshot()
        if drop:
            drop_layers(adapter, drop)

        s, substeps = self.allocate(budgets, widths, fixed, target, non_emb0)
        refitted = self.refit(snapshot, kept) if snapshot is not None else 0
        uniform, config_notes = record_widths(adapter, [sources[i] for i in kept])
        self.notes += config_notes
        total1, non_emb1 = count_parameters(self.model)
        return PruneReport(
            method=cfg.method,
            importance=cfg.importance,
            target_sparsity=cfg.sparsity,
            params_before=total0,
            params_after=total1,
            non_embedding_before=non_emb0,
            non_embedding_after=non_emb1,
            layers=self.layer_rows(groups0, kept, sources, s),
            dropped_layers=[sources[i] for i in drop],
            protected_layers=[sources[i] for i in cfg.protect_layers],
            uniform=uniform,
            substeps=substeps,
            calibration_tokens=self.calib_tokens,
            refitted=refitted,
            skipped=self.notes,
        )

    # -- refit (compress.pruning.refit) --------------------------------------
    def snapshot(self) -> Snapshot | None:
        """The layers before pruning on the first ``refit_samples`` calibration rows, the refit's target;
        None when there is no refit."""
        if not self.cfg.refit:
            return None
        if self.tokens is None:
            self.notes.append("No refit after pruning: it needs calibration text (pass data=).")
            return None
        rows = self.tokens[: self.cfg.refit_samples].to(self.adapter.embed.weight.device)
        with _evaluating(self.model):
            return Snapshot.take(self.adapter, list(rows.split(self.cfg.batch_size)))

    def refit(self, snapshot: Snapshot, kept: list[int]) -> int:
        with _evaluating(self.model):
            done = refit_outputs(self.adapter, snapshot, kept, damp=self.cfg.refit_damp, progress=self.cfg.progress)
        self.calib_tokens += sum(b.numel() for b in snapshot.batches)
        return done

    def plan(
        self, groups0: list[LayerGroups], kept: list[int], drop: list[int], non_emb0: int, target: float
    ) -> tuple[list[alloc.LayerBudget], list[alloc.Widths], int]:
        """Check the budget can be met before touching a weight; return budgets, widths, fixed params.

        Budgets and widths cover the layers in ``self.active`` (indices into ``kept``).
        """
        cfg = self.cfg
        dropped_params = sum(_numel(self.adapter.layers[i]) for i in drop)
        if non_emb0 - dropped_params < target:
            raise CompressError(
                f"drop_layers={cfg.drop_layers} alone removes {dropped_params / non_emb0:.1%} of non-embedding "
                f"parameters, more than sparsity {cfg.sparsity}; drop fewer layers or raise sparsity."
            )
        managed = [groups0[kept[j]] for j in self.active]
        budgets = [layer_budget(g) for g in managed]
        widths = [(g.mlp_width, g.num_kv_heads) for g in managed]
        # Parameters no pruning touches: embeddings aside, norms, the o/down biases and protected layers.
        fixed = non_emb0 - dropped_params - alloc.prunable_params(budgets, widths)
        message = unreachable(cfg, budgets, widths, fixed, non_emb0)
        if message:
            raise CompressError(message)
        return budgets, widths, fixed

    def choose_dropped_layers(self) -> list[int]:
        protected = self.cfg.protect_layers  # check_model made sure drop_layers leaves layers to keep
        cos = self.calibrate(cosine=True, scores=False).cosine
        assert cos is not None
        # The layers that change their input least (highest similarity) matter least; protected ones stay.
        order = [i for i in torch.argsort(cos, descending=True, stable=True).tolist() if i not in protected]
        return sorted(order[: self.cfg.drop_layers])

    def allocate(
        self, budgets: list[alloc.LayerBudget], widths: list[alloc.Widths], fixed: int, target: float, non_emb0: int
    ) -> tuple[torch.Tensor, int]:
        """Sub-steps until the model is within budget; returns the final s_l and the sub-step count."""
        cfg = self.cfg
        adapt = cfg.method == "adapt"
        amplitude = cfg.amplitude if adapt else 0.0  # uniform = the same rule with no importance term
        s = torch.zeros(len(budgets), dtype=torch.float64)
        max_steps = int(10 * len(budgets) * (1 + amplitude / cfg.step) / cfg.step) + 100
        needs_stats = adapt or cfg.importance != "magnitude"
        stats: Calibration | None = None
        changed, substeps = True, 0

        def params_at(sparsities: torch.Tensor) -> int:
            return fixed + alloc.prunable_params(budgets, alloc.widths_at(budgets, widths, sparsities, cfg.round_to))

        params = params_at(s)
        if cfg.progress and needs_stats:  # the cost before it is paid: each sub-step re-scores on fresh windows
            backward = " forward and backward" if cfg.importance == "taylor" else ""
            tqdm.write(f"{cfg.method} pruning to {1 - target / non_emb0:.0%}: about {math.ceil((1 - target / params) / cfg.step)} "
                       f"sub-steps of {cfg.step}, each scoring {cfg.calib_samples} windows of {self.seq_len} tokens{backward} "
                       f"(fewer with a larger step or fewer calib_samples)")
        bar = tqdm(total=max(int(params - target), 0), unit="param", unit_scale=True,
                   desc=f"{cfg.method} pruning", disable=not cfg.progress)
        try:
            while params > target:
                substeps += 1
                if substeps > max_steps:
                    raise CompressError(
                        f"Allocation did not reach the budget in {max_steps} sub-steps; raise step or lower amplitude."
                    )
                if needs_stats and changed:
                    stats = self.calibrate(cosine=adapt)
                importance = torch.zeros(len(budgets), dtype=torch.float64)
                if adapt and stats is not None and stats.cosine is not None:
                    cosine = stats.cosine[self.active]  # protected layers take no part in the normalisation
                    importance = alloc.normalise(alloc.layer_importance(cosine), s < alloc.MAX_SPARSITY)
                s = alloc.step(s, cfg.step, amplitude, importance, params_at, target)
                new = alloc.widths_at(budgets, widths, s, cfg.round_to)
                for j, (old_w, new_w) in enumerate(zip(widths, new)):
                    if old_w != new_w:
                        self.shrink_layer(self.active[j], new_w, stats)
                changed, widths = new != widths, new
                now = params_at(s)
                bar.update(min(params - now, bar.total - bar.n))
                bar.set_postfix(substep=substeps, sparsity=f"{1 - now / non_emb0:.3f}")
                params = now
        finally:
            bar.close()
        self.note_granularity(budgets, widths)
        return s, substeps

    def shrink_layer(self, i: int, widths: alloc.Widths, stats: Calibration | None) -> None:
        parts = self.adapter.layer(i)
        g = layer_groups(parts)
        mlp_scores, kv_scores = _layer_scores(self.cfg.importance, parts, g, stats, i)
        if widths[0] != g.mlp_width:
            prune_mlp(parts, top_k(mlp_scores, widths[0]))
        if widths[1] != g.num_kv_heads:
            if self.measures_kv():
                kv_scores = self.kv_removal_losses(i)
            attention = self.adapter.attention_module(i)
            prune_attention(parts, g, top_k(kv_scores, widths[1]), attention, self.adapter.spec.attn_head_attrs)

    def measures_kv(self) -> bool:
        return (self.cfg.kv_loss_windows > 0 and self.cfg.importance != "magnitude"
                and self.last_windows is not None and self.adapter.spec.causal)

    def kv_removal_losses(self, i: int) -> torch.Tensor:
        """Each kv group's score: how far the model's next-token distributions move (KL, nats per token) on
        the latest calibration windows when the group's heads are cut out of ``o`` (an exact removal: heads
        reach the output only through their columns of ``o``).  A silent group scores 0."""
        parts = self.adapter.layer(i)
        g = layer_groups(parts)
        o = parts.o.weight.detach()
        ids = self.last_windows.to(self.adapter.embed.weight.device)
        was_training = self.model.training
        self.model.eval()
        try:
            probe = KLProbe(self.model, self.adapter, ids.split(self.cfg.batch_size))
            kl = []
            for group in range(g.num_kv_heads):
                cut = o.clone()
                cut[:, g.q_rows([group]).to(o.device)] = 0
                kl.append(probe.error(i, [(parts.o, cut)]))
        finally:
            self.model.train(was_training)
        return torch.tensor(kl, dtype=torch.float64)

    def note_granularity(self, budgets: list[alloc.LayerBudget], widths: list[alloc.Widths]) -> None:
        rows = list(zip(self.active, budgets, widths))
        whole = [i for i, b, w in rows if w[0] < b.mlp_init and w[1] == b.kv_init]
        if whole:
            self.notes.append(
                f"Layers {whole} lost MLP channels but kept every kv group: a group goes only when the "
                "layer's s_l covers a whole one."
            )
        least = [i for i, b, w in rows if w == (min(self.cfg.round_to, b.mlp_init), 1)]
        if least:
            self.notes.append(
                f"Layers {least} are at the minimum width (one kv group, {self.cfg.round_to} MLP channels)."
            )
        if self.cfg.protect_layers:
            self.notes.append(f"Layers {list(self.cfg.protect_layers)} (as given) are protected: full width kept.")
        if self.cfg.importance == "activation":
            self.notes.append("FLAP's bias compensation is not applied: the stock modules have no bias to hold it.")

    def layer_rows(
        self, groups0: list[LayerGroups], kept: list[int], sources: list[int], s: torch.Tensor
    ) -> list[LayerWidths]:
        s_all = torch.zeros(len(kept), dtype=torch.float64)
        s_all[self.active] = s  # protected layers: 0
        rows = []
        for new_i, old_i in enumerate(kept):
            g0, g1 = groups0[old_i], layer_groups(self.adapter.layer(new_i))
            rows.append(LayerWidths(
                index=new_i,
                source=sources[old_i],
                heads=(g0.num_heads, g1.num_heads),
                kv_heads=(g0.num_kv_heads, g1.num_kv_heads),
                mlp=(g0.mlp_width, g1.mlp_width),
                sparsity=float(s_all[new_i]),
                params=(g0.params(g0.mlp_width, g0.num_kv_heads), g1.params(g1.mlp_width, g1.num_kv_heads)),
            ))
        return rows


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the block, then the mode the model had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layer_scores(
    kind: str, parts: LayerParts, g: LayerGroups, stats: Calibration | None, i: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(MLP channel scores, kv group scores) of layer ``i`` by importance ``kind``."""
    grads = stats.grads[i] if stats is not None and stats.grads is not None else None
    mlp_var = stats.mlp_var[i] if stats is not None and stats.mlp_var is not None else None
    o_var = stats.o_var[i] if stats is not None and stats.o_var is not None else None
    mlp = mlp_channel_scores(
        kind, [m.weight for m in parts.mlp_in], parts.mlp_out.weight,
        in_grads=grads.mlp_in if grads else None, out_grad=grads.mlp_out if grads else None, act_var=mlp_var,
    )
    kv = kv_group_scores(
        kind, parts.q.weight, parts.k.weight, parts.v.weight, parts.o.weight, g.head_dim, g.n_rep,
        grads=(grads.q, grads.k, grads.v, grads.o) if grads else None, o_act_var=o_var,
    )
    return mlp, kv
