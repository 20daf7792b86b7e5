"""Structured pruning: Adapt-Pruner's per-layer allocation over GQA-aware coupled groups.

``prune(model, 0.3, data=calib)`` removes MLP channels and whole kv groups
(optionally whole layers) for real and returns a ``PruneReport``.

Layout: ``config`` (PruneConfig), ``groups`` (which rows/columns belong
together), ``scores`` (importance math), ``allocation`` (per-layer sparsity),
``calibrate`` (hooks), ``surgery`` (slicing and config), ``pruner`` (the loop), ``report``.
Pruning never trains: Adapt-Accel (prune and train in stages) is ``compress.staged``.
"""
from compress.pruning.config import IMPORTANCES, METHODS, PruneConfig
from compress.pruning.problems import problems
from compress.pruning.pruner import prune
from compress.pruning.report import LayerWidths, PruneReport, StageReport
from compress.pruning.surgery import WIDTHS_KEY, apply_recorded_widths

__all__ = [
    "problems",
    "IMPORTANCES",
    "METHODS",
    "LayerWidths",
    "PruneConfig",
    "PruneReport",
    "StageReport",
    "WIDTHS_KEY",
    "apply_recorded_widths",
    "prune",
]
