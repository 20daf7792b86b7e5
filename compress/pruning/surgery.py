"""Surgery: physically remove channels, kv groups and layers, and keep the model consistent.

Linear layers are shrunk in place (new, smaller weight and bias tensors on
the same module), so references held elsewhere stay valid.  Attention
attributes that forward reads are rewritten per layer; the model config gets
the per-layer widths.  Nothing here decides *what* to remove.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from compress.arch import HEAD_ATTRS, Adapter, LayerParts
from compress.errors import CompressError
from compress.pruning.groups import LayerGroups

WIDTHS_KEY = "compress_layer_widths"


def unknown_head_attrs(adapter: Adapter) -> list[str]:
    """Attention attributes the adapter lists that surgery would not know how to rewrite."""
    return [a for a in adapter.spec.attn_head_attrs if a not in HEAD_ATTRS]


def shrink_linear(lin: nn.Linear, dim: int, keep: torch.Tensor) -> None:
    """Keep only rows (``dim=0``, with the bias) or columns (``dim=1``) ``keep`` of ``lin``."""
    idx = keep.to(lin.weight.device)
    weight = lin.weight.detach().index_select(dim, idx).clone()
    lin.weight = nn.Parameter(weight, requires_grad=lin.weight.requires_grad)
    if dim == 0:
        if lin.bias is not None:
            bias = lin.bias.detach().index_select(0, idx).clone()
            lin.bias = nn.Parameter(bias, requires_grad=lin.bias.requires_grad)
        lin.out_features = len(idx)
    else:
        lin.in_features = len(idx)


def prune_mlp(parts: LayerParts, keep: Sequence[int]) -> None:
    """Keep MLP channels ``keep``: rows of every ``mlp_in``, columns of ``mlp_out``."""
    idx = torch.as_tensor(list(keep), dtype=torch.long)
    for lin in parts.mlp_in:
        shrink_linear(lin, 0, idx)
    shrink_linear(parts.mlp_out, 1, idx)


def prune_attention(
    parts: LayerParts, groups: LayerGroups, keep: Sequence[int], attention: nn.Module, attrs: Sequence[str]
) -> None:
    """Keep kv groups ``keep``: k/v rows of their kv heads, q rows and o columns of their query heads."""
    kv_rows, q_rows = groups.kv_rows(keep), groups.q_rows(keep)
    shrink_linear(parts.k, 0, kv_rows)
    shrink_linear(parts.v, 0, kv_rows)
    shrink_linear(parts.q, 0, q_rows)
    shrink_linear(parts.o, 1, q_rows)
    heads, kv = len(keep) * groups.n_rep, len(keep)
    for name in attrs:
        if hasattr(attention, name):
            setattr(attention, name, HEAD_ATTRS[name](heads, kv, groups.head_dim))


def drop_layers(adapter: Adapter, drop: Sequence[int]) -> None:
    """Remove whole layers, renumber the rest (their cache slot) and the config's layer lists."""
    layers = adapter.layers
    cfg = adapter.text_config
    old, dropped = len(layers), set(drop)
    kept = [i for i in range(old) if i not in dropped]
    for i in sorted(dropped, reverse=True):
        del layers[i]  # ModuleList renumbers its children
    for new_index, layer in enumerate(layers):
        for module in layer.modules():
            # Attention modules index the KV cache by layer_idx: it must follow the layer.
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    cfg.num_hidden_layers = len(layers)
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == old:
        cfg.layer_types = [types[i] for i in kept]


def source_layers(adapter: Adapter) -> list[int]:
    """Each current layer's index in the original model (a model pruned before may have lost some)."""
    prior = getattr(adapter.text_config, WIDTHS_KEY, None)
    sources = prior.get("source_layers") if isinstance(prior, dict) else None
    if isinstance(sources, list) and len(sources) == adapter.num_layers:
        return [int(i) for i in sources]
    return list(range(adapter.num_layers))


def record_widths(adapter: Adapter, source_layers: Sequence[int]) -> tuple[bool, list[str]]:
    """Write per-layer widths into the config; return (all layers alike, notes).

    ``config.compress_layer_widths`` holds the lists (and which original layer
    each one was).  The global fields hold the widest layer, which is every
    layer when the result is uniform, so a uniform model's config is a stock
    one.  Head counts stay untouched in configs that derive head_dim from them.
    """
    d = adapter.describe()
    cfg = adapter.text_config
    heads, kv, mlp = d["num_heads"], d["num_kv_heads"], d["mlp_width"]
    uniform = len(set(heads)) == len(set(kv)) == len(set(mlp)) == 1
    setattr(cfg, WIDTHS_KEY, {
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": mlp,
        "source_layers": list(source_layers),
        "uniform": uniform,
    })
    notes: list[str] = []
    _set_if_present(cfg, "intermediate_size", max(mlp))
    if getattr(cfg, "head_dim", None):
        before = {n: getattr(cfg, n) for n in ("num_attention_heads", "num_key_value_heads") if hasattr(cfg, n)}
        _set_if_present(cfg, "num_attention_heads", max(heads))
        _set_if_present(cfg, "num_key_value_heads", max(kv))
        problem = _config_problem(cfg)
        if problem:
            for n, v in before.items():
                setattr(cfg, n, v)
            notes.append(
                f"The config keeps its original head counts because the pruned ones fail its own check "
                f"({problem}); they live in config.{WIDTHS_KEY} and reloading needs compress.load."
            )
    elif getattr(cfg, "num_attention_heads", max(heads)) != max(heads):
        notes.append(
            f"config.num_attention_heads stays {cfg.num_attention_heads}: this family derives head_dim from it, "
            f"so the pruned head counts live only in config.{WIDTHS_KEY} and reloading needs compress.load."
        )
    if not uniform:
        notes.append(
            f"Layer widths differ, so stock transformers cannot rebuild this model from its config; "
            f"config.{WIDTHS_KEY} holds them for compress.load."
        )
    return uniform, notes


def apply_recorded_widths(adapter: Adapter) -> bool:
    """Resize a freshly built model to the per-layer widths in its config, ready for ``load_state_dict``.

    For a model saved with ``save_pretrained`` after pruning (``compress.save``
    checkpoints reload through ``compress.load`` instead): build the stock
    model from the saved config (its global fields hold the widest layer),
    call this, then load the weights.  The resizing itself is the arch
    adapter's (``Adapter.resize_layer``), the same that ``compress.load``
    uses.  Returns False when the config records no widths.
    """
    widths = getattr(adapter.text_config, WIDTHS_KEY, None)
    if not isinstance(widths, dict):
        return False
    heads, kv, mlp = widths["num_attention_heads"], widths["num_key_value_heads"], widths["intermediate_size"]
    if not len(heads) == len(kv) == len(mlp) == adapter.num_layers:
        raise CompressError(
            f"config.{WIDTHS_KEY} describes {len(mlp)} layers but the model has {adapter.num_layers}; "
            "the config does not belong to this model."
        )
    for i in range(adapter.num_layers):
        device = adapter.layer(i).q.weight.device  # real tensors, so load_state_dict can copy into them
        adapter.resize_layer(i, heads[i], kv[i], mlp[i], device=device)
    return True


def _config_problem(cfg: Any) -> str | None:
    """The config class's own validation error (what from_pretrained would raise), if any."""
    validate = getattr(cfg, "validate", None)
    if not callable(validate):
        return None
    try:
        validate()
    except Exception as err:  # noqa: BLE001 - any failure means stock loading would fail too
        return str(getattr(err, "__cause__", None) or err).splitlines()[0]
    return None


def _set_if_present(cfg: Any, name: str, value: int) -> None:
    if hasattr(cfg, name):
        setattr(cfg, name, value)


def check_prunable(adapter: Adapter) -> None:
    """Raise one error naming every projection that is not a plain float ``nn.Linear``."""
    bad = []
    for i in range(adapter.num_layers):
        p = adapter.layer(i)
        for lin in (p.q, p.k, p.v, p.o, *p.mlp_in, p.mlp_out):
            if not isinstance(lin, nn.Linear) or not lin.weight.is_floating_point() or lin.weight.is_meta:
                bad.append(f"{p.name}: {type(lin).__name__}")
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise CompressError(
            f"Only float nn.Linear projections can be pruned, but found {shown}; prune before quantising."
        )
