"""Sensitivity: how much each module suffers from each quantisation format, and each layer from pruning.

    from compress.sensitivity import measure_sensitivity, load_override_map
    report = measure_sensitivity(model, text, metric="layer-error")   # text: TextSplits or token ids
    print(report.table())
    report.heatmap("sensitivity.png")
    report.write_override_map("overrides.yaml", target="int4-g128", keep=0.1)
    load_override_map("overrides.yaml")   # {"quantize": {...}, "prune": {...}} as config kwargs

Files: ``config.py`` (SensitivityConfig, formats), ``probes.py`` (the three
metrics), ``measure.py`` (the loop), ``report.py`` (table, JSON),
``heatmap.py``, ``overrides.py`` (override maps).
"""
from compress.sensitivity.config import FORMATS, METRICS, SensitivityConfig
from compress.sensitivity.measure import measure_sensitivity
from compress.sensitivity.overrides import build_override_map, load_override_map
from compress.sensitivity.report import LayerRow, ModuleRow, SensitivityReport

__all__ = [
    "FORMATS",
    "METRICS",
    "LayerRow",
    "ModuleRow",
    "SensitivityConfig",
    "SensitivityReport",
    "build_override_map",
    "load_override_map",
    "measure_sensitivity",
]
