"""What stops a prune before it starts, as sentences: the shapes, the scores, the budget.

``problems(model, config)`` lists them without touching a weight and works on a
meta-device model, so a recipe's pre-flight collects them before any long work.
"""
from __future__ import annotations

import torch
from torch import nn

from compress.arch import Adapter, adapter_for
from compress.errors import CompressError
from compress.pruning import allocation as alloc
from compress.pruning.config import PruneConfig
from compress.pruning.groups import layer_groups
from compress.pruning.surgery import check_prunable, unknown_head_attrs
from compress.sizes import count_parameters


def problems(model: nn.Module, config: PruneConfig, *, seq_len: int | None = None) -> list[str]:
    """Every reason ``config`` cannot prune ``model`` (empty when it can); ``seq_len``: the text's, if known."""
    return prune_problems(model, config, seq_len=seq_len)[0]


def prune_problems(model: nn.Module, cfg: PruneConfig, *, seq_len: int | None = None,
                   adapter: Adapter | None = None) -> tuple[list[str], bool]:
    """``(problems, readable)``: readable is False when the layers cannot even be read as GQA groups."""
    adapter = adapter or adapter_for(model)
    found: list[str] = []
    try:
        check_prunable(adapter)
    except CompressError as err:
        return [str(err)], False
    unknown = unknown_head_attrs(adapter)
    if unknown:
        found.append(f"the {adapter.spec.family} adapter names attention attribute(s) {unknown} that "
                     f"pruning does not know how to rewrite.")
    if cfg.importance == "taylor" and adapter.lm_head is None:
        found.append("importance 'taylor' needs a language-model loss and this model has no LM head; "
                     "use importance 'magnitude' or 'activation'.")
    groups = []
    for i in range(adapter.num_layers):
        try:
            groups.append(layer_groups(adapter.layer(i)))
        except CompressError as err:
            found.append(str(err))
    if len(groups) != adapter.num_layers:
        return found, False
    if cfg.drop_layers >= adapter.num_layers:
        found.append(f"drop_layers={cfg.drop_layers} would leave none of the {adapter.num_layers} layers.")
    if seq_len is not None and cfg.needs_data and cfg.calib_seq_len and cfg.calib_seq_len > seq_len:
        found.append(f"calib_seq_len={cfg.calib_seq_len} is longer than the text's seq_len="
                     f"{seq_len}; lower calib_seq_len or raise text seq_len.")
    # The pruner's own budget check, before any calibration: can the target be met at all?
    non_emb = count_parameters(model)[1]
    budgets = [alloc.LayerBudget(g.mlp_width, g.num_kv_heads, g.mlp_channel_params, g.kv_group_params) for g in groups]
    widths = [(g.mlp_width, g.num_kv_heads) for g in groups]
    fixed = non_emb - alloc.prunable_params(budgets, widths)
    cap = torch.full((len(groups),), alloc.MAX_SPARSITY)
    floor = fixed + alloc.prunable_params(budgets, alloc.widths_at(budgets, widths, cap, cfg.round_to))
    if cfg.drop_layers == 0 and floor > non_emb * (1 - cfg.sparsity):
        found.append(
            f"sparsity {cfg.sparsity} cannot be reached; at most {1 - floor / non_emb:.1%} of the non-embedding "
            f"parameters can go while each layer keeps one kv group and {cfg.round_to} MLP channels."
        )
    return found, True
