"""The public entry points that compose the subpackages.

Those whose issues have not landed yet raise ``NotImplementedError`` with one
sentence saying what is missing, so that a user (and the CLI) gets a clear
answer instead of an AttributeError.
"""
from __future__ import annotations

from typing import Any, NoReturn

from compress.io import load, save

__all__ = ["load", "prune", "quantize", "recover", "run", "save"]


def _not_built(what: str) -> NoReturn:
    raise NotImplementedError(
        f"{what} is not built yet in this version of compress-lm; see the feature table in README.md."
    )


def _record(model: Any, step: dict[str, Any]) -> None:
    """Append a compression step to ``config.compress_methods`` (checkpoint manifests list them)."""
    history = list(getattr(model.config, "compress_methods", None) or [])
    history.append(step)
    model.config.compress_methods = history


def prune(model: Any, config_or_sparsity: Any = None, data: Any = None, **kwargs: Any) -> Any:
    """Structured pruning (Adapt-Pruner) in place; see ``compress.prune.prune``."""
    from dataclasses import asdict

    from compress.prune import prune as prune_model
    from compress.prune.pruner import resolve_config

    config = resolve_config(config_or_sparsity, kwargs)
    report = prune_model(model, config, data)
    _record(model, {"step": "prune", "config": asdict(config), "achieved_sparsity": report.achieved_sparsity})
    return report


def quantize(model: Any, config: Any = None, data: Any = None) -> Any:
    """Ternary or int4 quantisation in place to packed modules; see ``compress.quant.quantize``."""
    from compress.quant import quantize as quantize_model

    report = quantize_model(model, config, data)
    _record(model, {"step": "quantize", "config": report.config, "bits_per_weight": report.bits_per_weight})
    return report


def recover(model: Any, teacher: Any = None, data: Any = None, config: Any = None, **kwargs: Any) -> Any:
    """Recovery training (distillation, QAT, LoRA) in place; see ``compress.recover.loop.recover``."""
    from compress.recover.loop import recover as recover_model

    report = recover_model(model, teacher, data, config, **kwargs)
    _record(model, {"step": "recover", "objective": report.objective, "steps": report.steps, "tokens": report.tokens,
                    "eval_after": report.eval_after})
    return report


def run(model: Any, recipe: Any, *args: Any, **kwargs: Any) -> Any:
    """A whole recipe: prune, recover, quantise, export, with a report."""
    _not_built("Recipes (compress.run)")
