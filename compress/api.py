"""The public entry points that compose the subpackages.

Each forwards to its subpackage (imported lazily, so ``import compress`` stays
cheap) and records the step in ``model.config.compress_methods``, which
checkpoint manifests list.
"""
from __future__ import annotations

from typing import Any

from compress.io import load, save

__all__ = ["load", "prune", "quantize", "recover", "save"]


def _record(model: Any, step: dict[str, Any]) -> None:
    """Append a compression step to ``config.compress_methods`` (checkpoint manifests list them)."""
    history = list(getattr(model.config, "compress_methods", None) or [])
    history.append(step)
    model.config.compress_methods = history


def prune(model: Any, config_or_sparsity: Any = None, data: Any = None, **kwargs: Any) -> Any:
    """Structured pruning (Adapt-Pruner) in place; see ``compress.pruning.prune``.

    With ``stages > 1`` it prunes and trains in turns (Adapt-Accel, ``compress.staged``):
    ``data`` must then be a ``TextSplits`` whose ``train`` split trains between
    stages and whose ``eval`` split measures each stage.
    """
    from dataclasses import asdict

    from compress.pruning import prune as prune_model
    from compress.pruning.pruner import resolve_config

    config = resolve_config(config_or_sparsity, kwargs)
    if config.stages > 1:  # Adapt-Accel composes pruning and recovery, so it lives above both
        from compress.staged import prune_staged

        report = prune_staged(model, config, data)
    else:
        report = prune_model(model, config, data)
    _record(model, {"step": "prune", "config": asdict(config), "achieved_sparsity": report.achieved_sparsity})
    return report


def quantize(model: Any, config: Any = None, data: Any = None, *, dtype: Any = None) -> Any:
    """Ternary or int4 quantisation in place to packed modules; see ``compress.quantization.quantize``."""
    from compress.quantization import quantize as quantize_model

    report = quantize_model(model, config, data, dtype=dtype)
    _record(model, {"step": "quantize", "config": report.config, "bits_per_weight": report.bits_per_weight})
    return report


def recover(model: Any, teacher: Any = None, data: Any = None, config: Any = None, **kwargs: Any) -> Any:
    """Recovery training (distillation, QAT, LoRA) in place; see ``compress.recovery.loop.recover``."""
    from compress.recovery.loop import recover as recover_model

    report = recover_model(model, teacher, data, config, **kwargs)
    _record(model, {"step": "recover", "objective": report.objective, "steps": report.steps, "tokens": report.tokens,
                    "eval_after": report.eval_after})
    return report
