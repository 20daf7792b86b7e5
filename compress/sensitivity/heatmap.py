"""The sensitivity heat map: one row per layer, log-scaled colours, grey where nothing was measured.

Drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas, so it never
touches pyplot's global backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from compress.sensitivity.report import SensitivityReport


def draw_heatmap(report: "SensitivityReport", path: Path) -> None:
    """Write ``report`` as a PNG to ``path``: quantisation errors left, pruning errors and 1 - cos right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_layers = len(report.layers)
    paths = list(dict.fromkeys(m.module for m in report.modules))
    quant = np.full((n_layers, len(report.formats) * len(paths)), np.nan)
    labels = []
    for f_i, fmt in enumerate(report.formats):
        for p_i, p in enumerate(paths):
            labels.append(f"{fmt}  {_short(p, paths)}")
    for m in report.modules:
        for f_i, fmt in enumerate(report.formats):
            if m.errors[fmt] is not None:
                quant[m.layer, f_i * len(paths) + paths.index(m.module)] = m.errors[fmt]
    pct = f"{report.prune_fraction:.0%}"
    prune = np.array([[np.nan if v is None else v for v in (r.prune_mlp, r.prune_attn)] for r in report.layers])
    importance = np.array([[r.importance] for r in report.layers])

    # Quantisation and pruning errors are the same metric: one colour scale makes them comparable.
    errors = np.concatenate([quant.ravel(), prune.ravel()])
    width = 3.5 + 0.28 * (quant.shape[1] + 6)
    height = 2.5 + 0.22 * n_layers
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    # columns: quantisation, pruning, its colour bar, a gap for that bar's labels, importance, its colour bar
    grid = fig.add_gridspec(1, 6, width_ratios=[quant.shape[1], 2, 0.4, 1.6, 1, 0.4], wspace=0.3)
    panels = [
        (grid[0, 0], quant, labels, "quantising one module", _log_norm(errors), None),
        (grid[0, 1], prune, [f"MLP {pct}", f"kv groups {pct}"], "pruning", _log_norm(errors), grid[0, 2]),
        (grid[0, 4], importance, ["1 - cos"], "layer importance", _log_norm(importance.ravel()), grid[0, 5]),
    ]
    for k, (cell, values, names, title, norm, bar_cell) in enumerate(panels):
        ax = fig.add_subplot(cell)
        shown = np.ma.masked_invalid(np.where(values > 0, values, np.nan))
        image = ax.imshow(shown, aspect="auto", cmap=_cmap(), norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticks(range(n_layers))
        ax.set_yticklabels([str(r.layer) for r in report.layers], fontsize=7)
        ax.set_title(title, fontsize=9)
        if k == 0:
            ax.set_ylabel("layer")
            for f_i in range(1, len(report.formats)):
                ax.axvline(f_i * len(paths) - 0.5, color="white", linewidth=1.5)
        if bar_cell is not None and norm is not None:
            cax = fig.add_subplot(bar_cell)
            fig.colorbar(image, cax=cax)
            cax.tick_params(which="both", labelsize=7)
            cax.set_ylabel(report.metric if k == 1 else "1 - cos", fontsize=8)
    fig.suptitle(f"{report.model}: {report.metric} on {report.sequences} x {report.seq_len} tokens (grey: not measured)",
                 fontsize=10)
    fig.savefig(path, format="png", bbox_inches="tight")


def _log_norm(values: np.ndarray):
    """A log colour scale over the positive finite values (None when there are none)."""
    from matplotlib.colors import LogNorm

    positive = values[np.isfinite(values) & (values > 0)]
    if not positive.size:
        return None
    return LogNorm(vmin=positive.min(), vmax=max(positive.max(), positive.min() * 1.0001))


def _cmap():
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="lightgrey")


def _short(path: str, paths: list[str]) -> str:
    """The last part of a module path when that alone is unambiguous (``q_proj``), else the whole path."""
    leaf = path.rsplit(".", 1)[-1]
    return leaf if sum(p.rsplit(".", 1)[-1] == leaf for p in paths) == 1 else path
