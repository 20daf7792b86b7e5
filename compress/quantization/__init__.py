"""Quantisation: ternary (absmean / absmedian) and int4 (round-to-nearest, GPTQ) to packed modules.

    from compress.quantization import quantize
    report = quantize(model, "int4")                      # or "ternary", "int4-gptq" (data=...), QuantConfig(...)
    print(report)

Files: ``config.py`` (QuantConfig and its two kinds, Int4Config and TernaryConfig; shorthands), ``quantizers.py`` and
``gptq.py`` (the math, on plain tensors), ``linear.py`` (QuantLinear),
``qat.py`` (FakeQuantLinear, straight-through estimator), ``plan.py``
(targets and validation), ``calibrate.py`` (layer-by-layer GPTQ),
``memory.py`` (giving replaced float weights back), ``apply.py`` (the entry
points), ``budget.py`` (``target_size``: formats chosen per module within a
size budget), ``report.py``.
"""
from compress.quantization.apply import prepare_qat, quantize, quantize_to_size
from compress.quantization.budget import BudgetReport
from compress.sizes import parse_size
from compress.quantization.config import SHORTHANDS, Int4Config, QuantConfig, QuantError, TernaryConfig, resolve_config
from compress.quantization.linear import QuantLinear
from compress.quantization.qat import FakeQuantLinear, set_qat_lambda
from compress.quantization.report import ModuleRecord, QuantReport

__all__ = [
    "SHORTHANDS",
    "BudgetReport",
    "FakeQuantLinear",
    "Int4Config",
    "ModuleRecord",
    "QuantConfig",
    "QuantError",
    "QuantLinear",
    "QuantReport",
    "TernaryConfig",
    "parse_size",
    "prepare_qat",
    "quantize",
    "quantize_to_size",
    "resolve_config",
    "set_qat_lambda",
]
