"""No file of the checkout may shadow a package that our dependencies import.

transformers (>= 5.2x) imports Hugging Face's ``kernels`` package when its modeling code loads.
A ``kernels`` module or folder at the repository root, or beside a script that runs from the
checkout (benchmarks/, examples/, scripts/), takes its place on ``sys.path`` and every model
import then fails with "cannot import name ... from 'kernels'".
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT_DIRS = [REPO, REPO / "benchmarks", REPO / "examples", REPO / "scripts"]
# Top-level names that transformers, torch or our other dependencies import.
GUARDED = ["kernels", "transformers", "torch", "triton", "safetensors", "tokenizers", "gguf", "numpy", "yaml", "tqdm"]


@pytest.mark.parametrize("folder", SCRIPT_DIRS, ids=lambda p: p.name or "root")
def test_no_module_in_a_script_folder_shadows_a_dependency(folder):
    clashes = [n for n in GUARDED if (folder / f"{n}.py").exists() or (folder / n).is_dir()]
    assert clashes == [], f"{folder} holds {clashes}, which would shadow the installed package(s) of that name"


@pytest.mark.parametrize("cwd", ["benchmarks", "."])
def test_transformers_modeling_imports_from_a_script_folder(cwd):
    """The way a benchmark runs: its folder is sys.path[0]."""
    code = "import sys; sys.path.insert(0, '.'); import transformers.modeling_utils, compress.kernels"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO / cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
