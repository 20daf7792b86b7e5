"""``import compress.kernels`` is cheap and side-effect free; names load lazily."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import compress.kernels as ck


def test_import_loads_neither_triton_nor_cuda():
    code = (
        "import sys, compress.kernels as k\n"
        "print('triton' in sys.modules, 'compress.kernels.dispatch' in sys.modules)\n"
        "k.pack_int4\n"
        "print('triton' in sys.modules, 'compress.kernels.dispatch' in sys.modules)\n"
        "import torch\n"
        "print(torch.cuda.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False", "False", "False"]


def test_public_names_resolve():
    for name in ck.__all__:
        assert getattr(ck, name) is not None
    assert set(ck.FORMATS) == {"int4", "int3", "ternary", "ternary_a8"}
    assert "quant_matmul" in dir(ck)


@pytest.mark.slow
def test_kernels_compile_for_h100_without_a_gpu():
    # Runs Triton's real compiler (to PTX and cubin for sm_90) in a process jitted without the interpreter.
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-m", "tests.kernels.sm90_compile"], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == 22  # 2 dtypes x (3 GEMV (int4, int3, ternary) + 4 kernels x 2 tilings)
