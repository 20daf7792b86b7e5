"""Quantisation: ternary (absmean / absmedian) and int4 (round-to-nearest, GPTQ) to packed modules.

    from compress.quantization import quantize
    report = quantize(model, "int4")                      # or "ternary", "int4-gptq" (data=...), QuantConfig(...)
    print(report)

Files: ``config.py`` (QuantConfig, shorthands), ``quantizers.py`` and
``gptq.py`` (the math, on plain tensors), ``linear.py`` (QuantLinear),
``qat.py`` (FakeQuantLinear, straight-through estimator), ``plan.py``
(targets and validation), ``calibrate.py`` (layer-by-layer GPTQ),
``memory.py`` (giving replaced float weights back), ``apply.py`` (the entry
points), ``report.py``.
"""
from compress.quantization.apply import prepare_qat, quantize
from compress.quantization.config import SHORTHANDS, QuantConfig, QuantError, resolve_config
from compress.quantization.linear import QuantLinear
from compress.quantization.qat import FakeQuantLinear, set_qat_lambda
from compress.quantization.report import ModuleRecord, QuantReport

__all__ = [
    "SHORTHANDS",
    "FakeQuantLinear",
    "ModuleRecord",
    "QuantConfig",
    "QuantError",
    "QuantLinear",
    "QuantReport",
    "prepare_qat",
    "quantize",
    "resolve_config",
    "set_qat_lambda",
]
