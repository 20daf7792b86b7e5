"""The same loop on two processes (torchrun, gloo on the CPU), DDP and FSDP, and on one with the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from compress.recovery import recover
from tests.recovery import ddp_worker

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")


def _torchrun(out: Path, mode: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(ddp_worker.__file__)), str(out), mode]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _load(out: Path, name: str):
    from safetensors.torch import load_file

    return load_file(out / f"{name}.safetensors"), json.loads((out / f"{name}.json").read_text())


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _single_process_matches(out: Path, models, rep0: dict, r0: dict, distributed: str) -> None:
    """One process with the same global batch (2 ranks x 2 sequences) follows the same curve."""
    teacher, student, train, held = models
    single = recover(student, teacher, train, ddp_worker.config(out / "single", 2 * ddp_worker.PER_RANK_BATCH, distributed),
                     eval_data=held)
    assert single.total_steps == ddp_worker.STEPS and single.parallel == "single"
    assert [e["loss"] for e in single.train] == pytest.approx([e["loss"] for e in rep0["train"]], rel=1e-5, abs=1e-6)
    assert [e["loss"] for e in single.evals] == pytest.approx([e["loss"] for e in rep0["evals"]], rel=1e-5)
    for name, p in student.named_parameters():
        assert torch.allclose(p.detach(), r0[name], atol=1e-5, rtol=1e-4), name


def test_two_processes_match_each_other_and_one_process(tmp_path):
    _torchrun(tmp_path, "ddp")
    (r0, rep0), (r1, rep1) = _load(tmp_path, "rank0"), _load(tmp_path, "rank1")
    assert _same(r0, r1)  # DDP kept the ranks identical
    assert rep0["world_size"] == 2 and rep0["steps"] == ddp_worker.STEPS and rep0["parallel"] == "ddp"
    assert [e["loss"] for e in rep0["train"]] == [e["loss"] for e in rep1["train"]]
    # only rank 0 wrote files, and it wrote the checkpoints and the log
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000006"]
    assert json.loads((run / "log.json").read_text())["world_size"] == 2
    assert rep1["log_path"] is None and rep1["checkpoint"] is not None
    _single_process_matches(tmp_path, ddp_worker.models_and_data(), rep0, r0, "auto")


@pytest.mark.slow  # two interpreters and three runs: ~50 s on 2 busy cores
def test_fsdp_on_two_processes_matches_one_process_and_resumes_bit_exact(tmp_path):
    from safetensors.torch import load_file

    _torchrun(tmp_path, "fsdp")
    (r0, rep0), (r1, rep1) = _load(tmp_path, "rank0"), _load(tmp_path, "rank1")
    assert rep0["parallel"] == "fsdp" and rep0["world_size"] == 2 and rep0["steps"] == ddp_worker.STEPS
    # every rank's model is whole again, and the same; the odd MLP width was split unevenly
    assert _same(r0, r1) and r0["model.layers.0.mlp.up_proj.weight"].shape == (95, 64)
    assert [e["loss"] for e in rep0["train"]] == [e["loss"] for e in rep1["train"]]
    # the checkpoint holds whole tensors gathered from the shards: the final weights, the best ones
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000006"
    saved = load_file(ckpt / "weights.safetensors")
    assert _same(saved, {k: v for k, v in r0.items() if k in saved}) and saved.keys() == r0.keys()
    moments = load_file(ckpt / "optimizer.safetensors")
    assert moments["model.layers.0.mlp.up_proj.weight::exp_avg"].shape == (95, 64)
    assert (ckpt / "best.safetensors").is_file()
    # stopped after step 4 and resumed from step 3: bit for bit the uninterrupted run, its log too
    resumed, rep_resumed = _load(tmp_path, "rank0.resumed")
    assert rep_resumed["resumed_from"] == 3 and _same(resumed, r0)
    assert [e["loss"] for e in rep_resumed["train"]] == [e["loss"] for e in rep0["train"]]
    _single_process_matches(tmp_path, ddp_worker.odd_models_and_data(), rep0, r0, "fsdp")
