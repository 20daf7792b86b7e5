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


def prune(model: Any, *args: Any, **kwargs: Any) -> Any:
    """Structured pruning (Adapt-Pruner)."""
    _not_built("Structured pruning (compress.prune)")


def quantize(model: Any, *args: Any, **kwargs: Any) -> Any:
    """Ternary and int4 quantisation."""
    _not_built("Quantisation (compress.quantize)")


def recover(model: Any, *args: Any, **kwargs: Any) -> Any:
    """Recovery training (distillation, QAT, LoRA)."""
    _not_built("Recovery training (compress.recover)")


def run(model: Any, recipe: Any, *args: Any, **kwargs: Any) -> Any:
    """A whole recipe: prune, recover, quantise, export, with a report."""
    _not_built("Recipes (compress.run)")
