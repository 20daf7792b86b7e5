"""compress-lm: make small language models smaller and faster.

The public API is imported lazily so that ``import compress`` is cheap and has
no side effects (no transformers import, no device queries).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "load_model": "compress.models",
    "builtin_models": "compress.models",
    "load_text": "compress.data",
    "TextConfig": "compress.data",
    "TextSplits": "compress.data",
    "evaluate": "compress.eval",
    "evaluate_domains": "compress.eval",
    "DomainsReport": "compress.eval",
    "evaluation_domains": "compress.data",
    "GenerateConfig": "compress.generated",
    "EvalConfig": "compress.eval",
    "EvalReport": "compress.eval",
    "TaskConfig": "compress.tasks",
    "adapter_for": "compress.arch",
    "prune": "compress.api",
    "quantize": "compress.api",
    "recover": "compress.api",
    "save": "compress.api",
    "load": "compress.api",
    "run": "compress.pipeline",
    "export": "compress.io.exports",
    "PruneConfig": "compress.pruning",
    "PruneReport": "compress.pruning",
    "QuantConfig": "compress.quantization",
    "Int4Config": "compress.quantization",
    "TernaryConfig": "compress.quantization",
    "QuantReport": "compress.quantization",
    "RecoverConfig": "compress.recovery",
    "RecoverReport": "compress.recovery",
    "Recipe": "compress.pipeline",
    "RunReport": "compress.pipeline",
    "SensitivityConfig": "compress.sensitivity",
    "measure_sensitivity": "compress.sensitivity",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
