"""A run killed in a prune stage and again in a recover stage, then started again, ends where an uninterrupted run ends."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import compress
from tests.pipeline import kill_worker
from tests.pipeline.helpers import same_tensors, tiny_recipe

ROOT = Path(__file__).resolve().parents[2]


def _killed(inputs, out, mode):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, kill_worker.__file__, str(inputs.model), str(inputs.text), str(out), mode],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.mark.slow  # two subprocesses, each importing torch and transformers: ~30 s of CPU
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_twice_and_restarted_ends_with_the_uninterrupted_checkpoint(tmp_path, tiny_inputs):
    out = tmp_path / "killed"
    _killed(tiny_inputs, out, "prune")  # in the middle of stage 1
    assert not list((out / "stages").glob("*/stage.json")) if (out / "stages").exists() else True

    _killed(tiny_inputs, out, "recover:5")  # stage 2 checkpoints every 2 steps: step 4 is on disk
    assert (out / "stages" / "01-prune" / "stage.json").is_file()
    assert not (out / "stages" / "02-recover" / "stage.json").exists()
    assert [p.name for p in (out / "train" / "02-recover" / "checkpoints").iterdir()] == ["step-00000004"]

    logs: list[str] = []
    resumed = compress.run(None, tiny_recipe(tiny_inputs), out, progress=False, log=logs.append)
    text = "\n".join(logs)
    assert "[1/4] prune adapt taylor 30%: done in an earlier run, skipped" in text
    assert "resumed from the training checkpoint at step 4" in text
    assert resumed.stages[1]["result"]["resumed_from"] == 4

    whole = compress.run(None, tiny_recipe(tiny_inputs), tmp_path / "whole", progress=False, log=None)
    for a, b in zip(resumed.stages[:3], whole.stages[:3]):
        assert same_tensors(Path(a["checkpoint"]), Path(b["checkpoint"])), a["label"]
    assert same_tensors(out / "exports" / "native", tmp_path / "whole" / "exports" / "native")
    losses = lambda r: [(e["step"], e["loss"]) for e in r.stages[1]["result"]["train"]]  # noqa: E731
    assert losses(resumed) == losses(whole)  # the loss curve is the uninterrupted one's too
    assert not (out / "train" / "02-recover" / "checkpoints").exists()  # training state goes once the stage is done
    assert json.loads((out / "report.json").read_text())["final_checkpoint"].endswith("03-quantize")
