"""The same loop on two processes (torchrun, gloo on the CPU) and on one with the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from compress.recover import recover
from tests.recover import ddp_worker

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")


def test_two_processes_match_each_other_and_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(ddp_worker.__file__)), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    r0, r1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)  # DDP kept the ranks identical
    rep0, rep1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rep0["world_size"] == 2 and rep0["steps"] == ddp_worker.STEPS
    assert [e["loss"] for e in rep0["train"]] == [e["loss"] for e in rep1["train"]]
    # only rank 0 wrote files, and it wrote the checkpoints and the log
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000006"]
    assert json.loads((run / "log.json").read_text())["world_size"] == 2
    assert rep1["log_path"] is None and rep1["checkpoint"] is not None

    # one process with the same global batch (2 ranks x 2 sequences) follows the same curve
    teacher, student, train, held = ddp_worker.models_and_data()
    single = recover(student, teacher, train, ddp_worker.config(tmp_path / "single", 2 * ddp_worker.PER_RANK_BATCH), eval_data=held)
    assert single.total_steps == ddp_worker.STEPS
    assert [e["loss"] for e in single.train] == pytest.approx([e["loss"] for e in rep0["train"]], rel=1e-5, abs=1e-6)
    assert [e["loss"] for e in single.evals] == pytest.approx([e["loss"] for e in rep0["evals"]], rel=1e-5)
    for name, p in student.named_parameters():
        assert torch.allclose(p.detach(), r0[name], atol=1e-5, rtol=1e-4), name
