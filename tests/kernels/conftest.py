"""Shared fixtures for the kernel tests.

Without CUDA the Triton kernels run on the CPU interpreter.  ``@triton.jit``
reads TRITON_INTERPRET when a kernel module is imported, so it is set here,
before any test imports them; if something imported them earlier without it,
the ``triton_kernels`` fixture reloads them.
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

_TRITON_MODULES = ("triton_common", "triton_int4", "triton_ternary")


@pytest.fixture(scope="session")
def triton_kernels():
    """(int4 module, ternary module), jitted for the interpreter when there is no GPU."""
    pytest.importorskip("triton")
    if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1: Triton kernels cannot run here")
    mods = {name: importlib.import_module(f"compress.kernels.{name}") for name in _TRITON_MODULES}
    interpreted = type(mods["triton_int4"]._int4_gemv_kernel).__name__ == "InterpretedFunction"
    if not HAS_CUDA and not interpreted:  # imported before TRITON_INTERPRET was set
        mods = {name: importlib.reload(mods[name]) for name in _TRITON_MODULES}
    return mods["triton_int4"], mods["triton_ternary"]
