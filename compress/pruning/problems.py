"""What stops a prune before it starts, as sentences: the shapes, the scores, the budget.

``problems(model, config)`` lists them without touching a weight and works on a
meta-device model, so a recipe's pre-flight collects them before any long work.
It is the one source: the pruner raises the same sentences before it starts
(``pruner.check_model``), and its budget check after choosing the layers to
drop uses the same ``unreachable``.
"""
from __future__ import annotations

import torch
from torch import nn

from compress.arch import Adapter, adapter_for
from compress.errors import CompressError
from compress.pruning import allocation as alloc
from compress.pruning.config import PruneConfig
from compress.pruning.groups import LayerGroups, layer_groups
from compress.pruning.surgery import check_prunable, unknown_head_attrs
from compress.sizes import count_parameters


def problems(model: nn.Module, config: PruneConfig, *, seq_len: int | None = None) -> list[str]:
    """Every reason ``config`` cannot prune ``model`` (empty when it can); ``seq_len``: the text's, if known."""
    return prune_problems(model, config, seq_len=seq_len)[0]


def prune_problems(model: nn.Module, cfg: PruneConfig, *, seq_len: int | None = None,
                   adapter: Adapter | None = None) -> tuple[list[str], bool]:
    """``(problems, readable)``: readable is False when the layers cannot even be read as GQA groups.

    The one list of what stops a prune: the pruner raises these same sentences
    (``compress.pruning.pruner.check_model``) and a recipe's pre-flight lists them.
    """
    adapter = adapter or adapter_for(model)
    try:
        check_prunable(adapter)
    except CompressError as err:
        return [str(err)], False
    n = adapter.num_layers
    protect = protect_problems(n, cfg)
    found = list(protect)
    if cfg.importance == "taylor" and adapter.lm_head is None:
        found.append(f"{type(adapter.model).__name__} has no LM head and returns no loss, so Taylor importance cannot "
                     f"be computed; use importance='magnitude' or 'activation'.")
    unknown = unknown_head_attrs(adapter)
    if unknown:
        found.append(f"The {adapter.spec.family} adapter names attention attribute(s) {unknown} whose meaning surgery "
                     f"does not know, so their values cannot be rewritten after pruning heads.")
    groups = []
    for i in range(n):
        try:
            groups.append(layer_groups(adapter.layer(i)))
        except CompressError as err:
            found.append(str(err))
    if len(groups) != n:
        return found, False
    if cfg.drop_layers >= n:
        found.append(f"drop_layers={cfg.drop_layers} would leave none of the {n} layers; drop fewer.")
    if seq_len is not None and cfg.needs_data and cfg.calib_seq_len and cfg.calib_seq_len > seq_len:
        found.append(f"calib_seq_len={cfg.calib_seq_len} is longer than the text's seq_len="
                     f"{seq_len}; lower calib_seq_len or raise text seq_len.")
    # Can the target be met at all?  (Which layers drop_layers removes depends on the text: the pruner
    # asks again, through the same unreachable(), once it has chosen them.)
    if cfg.drop_layers == 0 and not protect:
        non_emb = count_parameters(model)[1]
        managed = [g for i, g in enumerate(groups) if i not in cfg.protect_layers]
        budgets = [layer_budget(g) for g in managed]
        widths = [(g.mlp_width, g.num_kv_heads) for g in managed]
        message = unreachable(cfg, budgets, widths, non_emb - alloc.prunable_params(budgets, widths), non_emb)
        if message:
            found.append(message)
    return found, True


def protect_problems(n: int, cfg: PruneConfig) -> list[str]:
    """``protect_layers`` against a model of ``n`` decoder layers (and against ``drop_layers``)."""
    protected = cfg.protect_layers
    outside = [i for i in protected if i >= n]
    if outside:
        return [f"protect_layers names layer(s) {outside}, but the model has {n} decoder layers (0-{n - 1}); "
                f"give indices in that range."]
    if len(protected) == n:
        return [f"protect_layers names all {n} decoder layers, which leaves nothing to prune; protect fewer layers."]
    if protected and cfg.drop_layers >= n - len(protected):
        return [f"drop_layers={cfg.drop_layers} would drop every layer outside protect_layers {list(protected)}, "
                f"leaving none to prune; drop fewer layers or protect fewer."]
    return []


def layer_budget(g: LayerGroups) -> alloc.LayerBudget:
    """What allocation needs to know of one layer."""
    return alloc.LayerBudget(g.mlp_width, g.num_kv_heads, g.mlp_channel_params, g.kv_group_params)


def unreachable(cfg: PruneConfig, budgets: list[alloc.LayerBudget], widths: list[alloc.Widths], fixed: int,
                non_emb0: int) -> str | None:
    """The sentence when ``cfg.sparsity`` of ``non_emb0`` cannot go, the ``budgets`` layers pruned as far as
    allowed and ``fixed`` parameters untouched; None when it can."""
    cap = torch.full((len(budgets),), alloc.MAX_SPARSITY)
    floor = fixed + alloc.prunable_params(budgets, alloc.widths_at(budgets, widths, cap, cfg.round_to))
    if floor <= non_emb0 * (1.0 - cfg.sparsity):
        return None
    protected = f" while protect_layers {list(cfg.protect_layers)} keep their full width" if cfg.protect_layers else ""
    fewer = ", or protect fewer layers" if cfg.protect_layers else ""
    return (f"sparsity {cfg.sparsity} cannot be reached; at most {1 - floor / non_emb0:.1%} of the non-embedding "
            f"parameters can go while each layer keeps one kv group and {cfg.round_to} MLP channels{protected}; "
            f"lower sparsity or round_to{fewer}.")
