"""Keep ``compress.prune(...)`` and ``compress.recover(...)`` callable.

The API functions share their names with the subpackages ``compress.prune``
and ``compress.recover``; once a subpackage is imported, Python binds its
name on ``compress`` to the module, hiding the function.  Giving those
modules a ``__call__`` that forwards to the API function makes both
spellings work: ``compress.prune(model, 0.3)`` and ``compress.prune.PruneConfig``.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def make_module_callable(module_name: str, api_name: str) -> None:
    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module("compress.api"), api_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
