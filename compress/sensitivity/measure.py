"""``measure_sensitivity``: quantise one module, or prune one layer, at a time and measure the damage.

For every decoder layer and every projection in it, each format's
round-to-nearest weight (``compress.quantization.quantizers.fake_quantize``, the
numbers ``compress.quantize`` would pack) replaces that projection alone.
For pruning, ``prune_fraction`` of the layer's MLP channels, then of its kv
groups, are removed by the same importance scores ``compress.prune`` uses.
Removing channels is done as a mask: zeroing the ``mlp_out`` columns of the
pruned channels (or the ``o`` columns of the pruned groups' query heads)
gives exactly the outputs that cutting them out would, without surgery.
The layer's Adapt-Pruner importance, ``1 - cos(h_in, h_out)``, comes from
the same calibration pass.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.arch import Adapter, LayerParts, adapter_for
from compress.errors import CompressError
from compress.kernels.formats import get_format
from compress.pruning.allocation import keep_channels, keep_groups
from compress.pruning.calibrate import Calibration, calibrate, calibration_rows, check_in_vocabulary, sample_windows
from compress.pruning.groups import LayerGroups, layer_groups
from compress.pruning.scores import kv_group_scores, mlp_channel_scores, top_k
from compress.quantization.qat import FakeQuantLinear
from compress.quantization.quantizers import fake_quantize
from compress.sensitivity.config import FORMATS, SensitivityConfig, format_config, resolve_config
from compress.sensitivity.probes import PROBES
from compress.sensitivity.report import LayerRow, ModuleRow, SensitivityReport


def measure_sensitivity(
    model: nn.Module,
    data: Any,
    config: SensitivityConfig | None = None,
    *,
    name: str = "model",
    **changes: Any,
) -> SensitivityReport:
    """Measure per-module quantisation error and per-layer pruning error of ``model``; the model is unchanged.

    ``data``: calibration token ids ``[n, seq_len]`` or a ``TextSplits`` (its
    ``calibration`` split is used).  ``changes`` set ``SensitivityConfig``
    fields.  Returns a ``SensitivityReport`` (``table()``, ``to_json()``,
    ``heatmap()``, ``write_override_map()``).
    """
    cfg = resolve_config(config, changes)
    adapter = adapter_for(model)
    check_model(adapter, cfg)
    ids = calibration_windows(data, cfg, adapter)
    start = time.perf_counter()
    stats = calibrate(
        model, adapter, ids,
        cosine=True,
        activations=cfg.importance == "activation",
        gradients=cfg.importance == "taylor",
        batch_size=cfg.batch_size,
        progress=cfg.progress,
    )
    was_training = model.training
    model.eval()
    try:
        device = adapter.embed.weight.device
        probe = PROBES[cfg.metric](model, adapter, [b.to(device) for b in ids.split(cfg.batch_size)])
        modules, layers, notes = _measure_all(adapter, cfg, probe, stats)
    finally:
        model.train(was_training)
    return SensitivityReport(
        model=name,
        metric=cfg.metric,
        formats=list(cfg.formats),
        prune_fraction=cfg.prune_fraction,
        importance=cfg.importance,
        sequences=int(ids.shape[0]),
        seq_len=int(ids.shape[1]),
        seconds=time.perf_counter() - start,
        layers_path=adapter.prefix + adapter.spec.layers,
        modules=modules,
        layers=layers,
        notes=notes,
    )


def check_model(adapter: Adapter, cfg: SensitivityConfig) -> None:
    """Raise one error if the model cannot be measured as configured (before any forward pass)."""
    bad = []
    for i in range(adapter.num_layers):
        p = adapter.layer(i)
        for lin in (p.q, p.k, p.v, p.o, *p.mlp_in, p.mlp_out):
            plain = isinstance(lin, nn.Linear) and not isinstance(lin, FakeQuantLinear)
            if not plain or not lin.weight.is_floating_point() or lin.weight.is_meta:
                bad.append(f"{p.name}: {type(lin).__name__}")
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise CompressError(
            f"Sensitivity is measured on float nn.Linear projections, but found {shown}; "
            "measure the model before quantising it."
        )
    cls = type(adapter.model).__name__
    if cfg.metric == "kl" and adapter.lm_head is None:
        raise CompressError(
            f"{cls} has no output head, so metric='kl' cannot be measured; use metric='layer-error' or 'module-error'."
        )
    if cfg.importance == "taylor" and adapter.lm_head is None:
        raise CompressError(
            f"{cls} has no LM head and returns no loss, so Taylor importance cannot be computed; "
            "use importance='magnitude' or 'activation'."
        )
    for i in range(adapter.num_layers):
        layer_groups(adapter.layer(i))  # raises on heads that don't form GQA groups


def calibration_windows(data: Any, cfg: SensitivityConfig, adapter: Adapter) -> torch.Tensor:
    """``cfg.sequences`` windows of ``cfg.seq_len`` tokens from ``data``, drawn with a private seeded generator."""
    if data is None:
        raise CompressError(
            "Sensitivity needs calibration text: pass data= as token ids [n, seq_len] or a TextSplits "
            "(compress.load_text)."
        )
    data = calibration_rows(data)
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise CompressError("The calibration data holds no sequences; give more text or a shorter seq_len.")
    seq_len = cfg.seq_len or data.shape[1]
    if data.shape[1] < seq_len:
        raise CompressError(
            f"Calibration sequences are {data.shape[1]} tokens long, shorter than seq_len={seq_len}; "
            "give longer sequences or lower seq_len."
        )
    check_in_vocabulary(data, adapter.embed.num_embeddings)
    generator = torch.Generator().manual_seed(cfg.seed)
    return sample_windows(data.long(), cfg.sequences, seq_len, generator)


def module_paths(adapter: Adapter) -> list[str]:
    """Paths of the projections inside a layer, in the table's column order."""
    s = adapter.spec
    return [s.q, s.k, s.v, s.o, *s.mlp_in, s.mlp_out]


def _measure_all(
    adapter: Adapter, cfg: SensitivityConfig, probe: Any, stats: Calibration
) -> tuple[list[ModuleRow], list[LayerRow], list[str]]:
    paths = module_paths(adapter)
    total = adapter.num_layers * (len(paths) * len(cfg.formats) + 2)
    modules: list[ModuleRow] = []
    layers: list[LayerRow] = []
    refitted: dict[str, set[int]] = {}
    unfit: dict[str, list[str]] = {}
    bar = tqdm(total=total, desc=f"sensitivity ({cfg.metric})", unit="entry", disable=not cfg.progress)
    try:
        for i in range(adapter.num_layers):
            parts = adapter.layer(i)
            for path, lin in zip(paths, (parts.q, parts.k, parts.v, parts.o, *parts.mlp_in, parts.mlp_out)):
                row = ModuleRow(layer=i, module=path, name=f"{parts.name}.{path}",
                                shape=(lin.out_features, lin.in_features), errors={}, group_sizes={})
                for fmt in cfg.formats:
                    qcfg = format_config(fmt, lin.out_features, lin.in_features)
                    if qcfg is None:
                        row.errors[fmt] = None
                        unfit.setdefault(fmt, []).append(row.name)
                    else:
                        if get_format(qcfg.packed_method).grouped:
                            row.group_sizes[fmt] = qcfg.group_size
                            if qcfg.group_size != FORMATS[fmt]["group_size"]:
                                refitted.setdefault(fmt, set()).add(qcfg.group_size)
                        row.errors[fmt] = probe.error(i, [(lin, fake_quantize(lin.weight, qcfg))])
                    bar.update(1)
                modules.append(row)
            layers.append(_prune_row(adapter, parts, cfg, probe, stats))
            bar.update(2)
    finally:
        bar.close()
    notes = [
        f"{fmt}: modules whose in_features the packed format does not accept at group size "
        f"{FORMATS[fmt]['group_size']} were measured at group size {', '.join(map(str, sorted(g, reverse=True)))}."
        for fmt, g in refitted.items()
    ]
    notes += [f"{fmt} cannot pack {len(names)} module(s) ({names[0]}, ...): shown as '-'." for fmt, names in unfit.items()]
    return modules, layers, notes


def _prune_row(adapter: Adapter, parts: LayerParts, cfg: SensitivityConfig, probe: Any, stats: Calibration) -> LayerRow:
    """Error of removing ``prune_fraction`` of layer ``parts.index``'s MLP channels, then of its kv groups."""
    i, f = parts.index, cfg.prune_fraction
    g = layer_groups(parts)
    mlp_scores, kv_scores = _scores(cfg.importance, parts, g, stats)
    mlp_keep = keep_channels(g.mlp_width, g.mlp_width, f, 1)
    kv_keep = keep_groups(g.num_kv_heads, g.num_kv_heads, f)

    kept = set(top_k(mlp_scores, mlp_keep))
    dropped = [c for c in range(g.mlp_width) if c not in kept]
    prune_mlp = None
    if dropped:
        w = parts.mlp_out.weight.detach().clone()
        w[:, dropped] = 0
        prune_mlp = probe.error(i, [(parts.mlp_out, w)])

    kept = set(top_k(kv_scores, kv_keep))
    dropped_groups = [k for k in range(g.num_kv_heads) if k not in kept]
    prune_attn = None
    if dropped_groups:
        w = parts.o.weight.detach().clone()
        w[:, g.q_rows(dropped_groups).to(w.device)] = 0
        prune_attn = probe.error(i, [(parts.o, w)])

    assert stats.cosine is not None
    return LayerRow(
        layer=i, name=parts.name, cosine=float(stats.cosine[i]),
        prune_mlp=prune_mlp, prune_attn=prune_attn,
        mlp_width=g.mlp_width, mlp_keep=mlp_keep, kv_groups=g.num_kv_heads, kv_keep=kv_keep,
    )


def _scores(kind: str, parts: LayerParts, g: LayerGroups, stats: Calibration) -> tuple[torch.Tensor, torch.Tensor]:
    """(MLP channel scores, kv group scores) of one layer, as ``compress.prune`` ranks them."""
    i = parts.index
    grads = stats.grads[i] if stats.grads is not None else None
    mlp = mlp_channel_scores(
        kind, [m.weight for m in parts.mlp_in], parts.mlp_out.weight,
        in_grads=grads.mlp_in if grads else None, out_grad=grads.mlp_out if grads else None,
        act_var=stats.mlp_var[i] if stats.mlp_var is not None else None,
    )
    kv = kv_group_scores(
        kind, parts.q.weight, parts.k.weight, parts.v.weight, parts.o.weight, g.head_dim, g.n_rep,
        grads=(grads.q, grads.k, grads.v, grads.o) if grads else None,
        o_act_var=stats.o_var[i] if stats.o_var is not None else None,
    )
    return mlp, kv
