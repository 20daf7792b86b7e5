"""A run killed at any moment and started again with the same command ends with the same weights."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from compress.recovery import RecoverError
from compress.recovery.state import list_checkpoints
from tests.recovery.helpers import all_equal, damaged_copy, odd_student, params, resumable_run as _run, sharp_teacher, token_data


class Killed(Exception):
    pass


def _kill_after(step):
    def hook(info):
        if info.step == step:
            raise Killed(f"killed after step {info.step}")
    return hook


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora-dropout"])
def test_killed_and_resumed_run_ends_bit_exact(tmp_path, lora):
    extra = dict(lora_rank=lora, lora_dropout=0.1, merge_lora=True) if lora else {}
    whole, whole_report = _run(tmp_path / "whole", **extra)
    with pytest.raises(Killed):
        _run(tmp_path / "killed", on_step=_kill_after(6), **extra)  # the last checkpoint is step 4
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["step-00000004"]
    resumed, report = _run(tmp_path / "killed", **extra)
    assert report.resumed_from == 4
    assert all_equal(resumed, whole)
    losses = lambda r: [(e["step"], e["loss"]) for e in r.train]  # noqa: E731
    assert losses(report) == losses(whole_report)  # the log is the uninterrupted one's too
    assert [e["loss"] for e in report.evals] == [e["loss"] for e in whole_report.evals]


def test_a_kill_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    whole, _ = _run(tmp_path / "whole")
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def dying_save(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # the second file of the second checkpoint (step 8)
            raise Killed("killed while writing a checkpoint")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    with pytest.raises(Killed):
        _run(tmp_path / "killed")
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    root = tmp_path / "killed" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-00000004"]  # no half-written directory
    resumed, report = _run(tmp_path / "killed")
    assert report.resumed_from == 4 and all_equal(resumed, whole)


def test_a_finished_run_started_again_trains_no_more(tmp_path):
    first, _ = _run(tmp_path)
    done = params(first)
    again, report = _run(tmp_path)
    assert report.resumed_from == 12 and report.steps == 12 and all_equal(again, done)
    state = json.loads((list_checkpoints(tmp_path)[-1] / "state.json").read_text())
    assert state["step"] == 12 and set(state["files"]) == {"weights.safetensors", "optimizer.safetensors", "rng.safetensors", "best.safetensors"}


def test_resume_refuses_another_config_model_or_data(tmp_path):
    teacher = sharp_teacher()
    ids = token_data(40, 16)
    with pytest.raises(Killed):
        _run(tmp_path, on_step=_kill_after(4), teacher=teacher, ids=ids)
    with pytest.raises(RecoverError, match=r"made with another config \(lr: 0.001 -> 0.002\)"):
        _run(tmp_path, teacher=teacher, ids=ids, lr=2e-3)
    with pytest.raises(RecoverError, match=r"made from another model \(the same tensor names, shapes and dtypes but other values\)"):
        _run(tmp_path, teacher=teacher, ids=ids, student=damaged_copy(teacher, seed=7))
    with pytest.raises(RecoverError, match=r"made from another model \(model.layers.0.mlp.gate_proj.weight is \[96, 64\] "
                                           r"float32 there and \[95, 64\] float32 here \(and 5 more\)\); resume with the model"):
        _run(tmp_path, teacher=teacher, ids=ids, student=odd_student())
    with pytest.raises(RecoverError, match="made with other training data"):
        _run(tmp_path, teacher=teacher, ids=token_data(40, 16, seed=5))
    with pytest.raises(RecoverError, match=r"holds checkpoints of an earlier run \(newest: step-00000004\); pass resume=True"):
        _run(tmp_path, teacher=teacher, ids=ids, resume=False)
    state_file = list_checkpoints(tmp_path)[-1] / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "world_size": 2}))
    with pytest.raises(RecoverError, match=r"made on 2 process\(es\) and this run has 1; .* resume on 2"):
        _run(tmp_path, teacher=teacher, ids=ids)
    state_file.write_text(json.dumps(state))
    with pytest.raises(RecoverError, match="does not match its sha256"):
        (list_checkpoints(tmp_path)[-1] / "weights.safetensors").write_bytes(b"garbage")
        _run(tmp_path, teacher=teacher, ids=ids)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_process_killed_with_sigkill_resumes_bit_exact(tmp_path):
    from tests.recovery import kill_worker

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, kill_worker.__file__, str(tmp_path / "killed"), "10"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["step-00000008"]
    resumed, report = _run(tmp_path / "killed")
    whole, _ = _run(tmp_path / "whole")
    assert report.resumed_from == 8 and all_equal(resumed, whole)
