"""``SensitivityReport``: what a sensitivity pass measured, as a table, JSON and a heat map."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compress.io.atomic import write_file, write_text
from compress.reports import Report

METRIC_MEANING = {
    "module-error": "relative error of the changed module's output, |X dW^T| / |X W^T| over all calibration tokens",
    "layer-error": "relative change of the layer's output hidden state, mean over tokens of |dh| / |h|",
    "kl": "KL(original || changed) of the model's output distributions, nats per token",
}


@dataclass
class ModuleRow:
    """One projection: its error under each format (None: the format cannot pack its shape)."""

    layer: int
    module: str  # path inside the layer, e.g. "mlp.down_proj"
    name: str  # full module name, as QuantConfig overrides match it
    shape: tuple[int, int]  # (out_features, in_features)
    errors: dict[str, float | None]
    group_sizes: dict[str, int] = field(default_factory=dict)  # int4 formats: the group size used


@dataclass
class LayerRow:
    """One layer: error of pruning ``prune_fraction`` of its MLP channels / kv groups, and its cosine."""

    layer: int
    name: str
    cosine: float  # mean cos(h_in, h_out): Adapt-Pruner's layer importance is 1 - cosine
    prune_mlp: float | None  # None: nothing to remove at this fraction
    prune_attn: float | None
    mlp_width: int
    mlp_keep: int
    kv_groups: int
    kv_keep: int

    @property
    def importance(self) -> float:
        return 1.0 - self.cosine

    @property
    def prune_error(self) -> float:
        """Both pruning errors together: how much this layer suffers from being pruned."""
        return (self.prune_mlp or 0.0) + (self.prune_attn or 0.0)


@dataclass
class SensitivityReport(Report):
    """Per-module quantisation errors and per-layer pruning errors of one model."""

    model: str
    metric: str
    formats: list[str]
    prune_fraction: float
    importance: str
    sequences: int
    seq_len: int
    seconds: float
    layers_path: str  # e.g. "model.layers": module names are f"{layers_path}.{i}.{module}"
    modules: list[ModuleRow]
    layers: list[LayerRow]
    notes: list[str] = field(default_factory=list)

    # -- queries -------------------------------------------------------------
    def ranking(self, fmt: str | None = None) -> list[ModuleRow]:
        """Modules by error under ``fmt`` (default: the first format), most sensitive first; unpackable last."""
        fmt = self._format(fmt)
        return sorted(self.modules, key=lambda m: -math.inf if m.errors[fmt] is None else m.errors[fmt], reverse=True)

    def module(self, name: str) -> ModuleRow:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(name)

    def _format(self, fmt: str | None) -> str:
        from compress.errors import CompressError

        fmt = fmt or self.formats[0]
        if fmt not in self.formats:
            raise CompressError(f"format {fmt!r} was not measured; this report has {', '.join(self.formats)}.")
        return fmt

    # -- text ------------------------------------------------------------------
    def table(self, top: int | None = 15, rank_by: str | None = None) -> str:
        """Per-layer table, then the ``top`` most sensitive modules under ``rank_by`` (None: every module)."""
        pct = f"{self.prune_fraction:.0%}"
        head = [
            f"sensitivity of {self.model}: {self.metric} on {self.sequences} x {self.seq_len} tokens, "
            f"{self.seconds:.1f} s",
            f"error = {METRIC_MEANING[self.metric]}",
            "",
        ]
        cols = ["layer", "1 - cos", f"prune MLP {pct}", f"prune kv {pct}"] + [f"{f} (max)" for f in self.formats]
        rows = []
        for lr in self.layers:
            mods = [m for m in self.modules if m.layer == lr.layer]
            worst = [max((m.errors[f] for m in mods if m.errors[f] is not None), default=None) for f in self.formats]
            rows.append([str(lr.layer), f"{lr.importance:.4f}", _num(lr.prune_mlp), _num(lr.prune_attn)]
                        + [_num(w) for w in worst])
        rank = self._format(rank_by)
        listed = self.ranking(rank) if top is not None else self.modules
        listed = listed[:top] if top is not None else listed
        title = (f"{len(listed)} most sensitive modules (ranked by {rank})" if top is not None
                 else "every module")
        mcols = ["module", "shape"] + self.formats
        mrows = [[m.name, f"{m.shape[0]}x{m.shape[1]}"] + [_num(m.errors[f]) for f in self.formats] for m in listed]
        tail = [""] + [f"note: {n}" for n in self.notes] if self.notes else []
        return "\n".join(head + _grid(cols, rows) + ["", title] + _grid(mcols, mrows) + tail)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metric_meaning"] = METRIC_MEANING[self.metric]
        for row in d["modules"]:
            row["shape"] = list(row["shape"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SensitivityReport":
        d = {k: v for k, v in d.items() if k != "metric_meaning"}
        d["modules"] = [ModuleRow(**{**m, "shape": tuple(m["shape"])}) for m in d["modules"]]
        d["layers"] = [LayerRow(**r) for r in d["layers"]]
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON text; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            write_text(path, text)
        return text

    # -- pictures and override maps --------------------------------------------
    def heatmap(self, path: str | Path) -> Path:
        """A PNG: rows are layers; columns are modules under each format, then the pruning errors."""
        from compress.sensitivity.heatmap import draw_heatmap

        return write_file(path, lambda tmp: draw_heatmap(self, tmp))

    def override_map(self, target: str | None = None, keep: float = 0.1, promote_to: str | None = None,
                     protect: int | None = None) -> dict[str, Any]:
        """``{"quantize": {...}, "prune": {...}}``: see ``compress.sensitivity.overrides.build_override_map``."""
        from compress.sensitivity.overrides import build_override_map

        return build_override_map(self, target, keep, promote_to, protect)

    def write_override_map(self, path: str | Path, target: str | None = None, keep: float = 0.1,
                           promote_to: str | None = None, protect: int | None = None) -> Path:
        """Write ``override_map(...)`` as YAML (atomically); ``load_override_map`` reads it back."""
        from compress.sensitivity.overrides import write_override_map

        return write_override_map(self, path, target, keep, promote_to, protect)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _grid(cols: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c), *(len(r[j]) for r in rows)) if rows else len(c) for j, c in enumerate(cols)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
