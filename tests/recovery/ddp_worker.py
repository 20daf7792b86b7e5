"""One rank of the two-process tests: ``python -m torch.distributed.run --nproc_per_node 2 ddp_worker.py OUT [ddp|fsdp]``.

Every rank builds the same teacher, student and data and calls ``recover``
unchanged, and writes its final weights and its report to OUT/rank{r}.*.

``ddp`` (the default): ``recover`` joins the group torchrun describes by
itself.  ``fsdp``: a student whose MLP width (95) does not split evenly over
two ranks, trained sharded; then the same run again, stopped after step 4
and resumed from its step-3 checkpoint, whose weights go to
OUT/rank{r}.resumed.*.  The worker creates the process group itself so that
the three ``recover`` calls share it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from compress.recovery import RecoverConfig, recover  # noqa: E402
from tests.recovery.helpers import damaged_copy, odd_student, sharp_teacher, token_data  # noqa: E402

PER_RANK_BATCH = 2
STEPS = 6
STOP_AFTER = 4  # the fsdp run that is stopped: its last checkpoint is step 3


class Stopped(Exception):
    pass


def config(out: Path, batch_size: int, distributed: str = "auto") -> RecoverConfig:
    extra = dict(patience=10) if distributed == "fsdp" else {}  # keeps best weights: gathered from the shards too
    # fp32: one process with twice the batch follows the ranks' curve to 1e-5 only in fp32 arithmetic (bf16 autocast,
    # "auto" on CPUs with native bf16, rounds a differently shaped batch differently)
    return RecoverConfig(steps=STEPS, batch_size=batch_size, grad_accum=2, lr=1e-3, schedule="cosine",
                         warmup_fraction=0.2, eval_every=3, checkpoint_every=3, output_dir=str(out), progress=False,
                         distributed=distributed, precision="fp32", **extra)


def models_and_data():
    teacher = sharp_teacher()
    ids = token_data(40, 16)
    return teacher, damaged_copy(teacher), ids[:32], ids[32:]


def odd_models_and_data():
    """The teacher and data of ``models_and_data`` with a student of another, odd MLP width."""
    teacher, _, train, held = models_and_data()
    return teacher, odd_student(), train, held


def _write(out: Path, name: str, student, report) -> None:
    from safetensors.torch import save_file

    save_file({n: p.detach().contiguous() for n, p in student.named_parameters()}, out / f"{name}.safetensors")
    (out / f"{name}.json").write_text(json.dumps(report.to_dict()))


def main() -> None:
    torch.set_num_threads(1)
    out, mode = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "ddp")
    rank = int(os.environ["RANK"])
    if mode == "ddp":
        teacher, student, train, held = models_and_data()
        report = recover(student, teacher, train, config(out / "run", PER_RANK_BATCH), eval_data=held)
        _write(out, f"rank{rank}", student, report)
        return

    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        teacher, student, train, held = odd_models_and_data()
        report = recover(student, teacher, train, config(out / "run", PER_RANK_BATCH, "fsdp"), eval_data=held)
        _write(out, f"rank{rank}", student, report)

        def stop(info):
            if info.step == STOP_AFTER:
                raise Stopped

        cfg = config(out / "stopped", PER_RANK_BATCH, "fsdp")
        teacher, student, train, held = odd_models_and_data()
        try:
            recover(student, teacher, train, cfg, eval_data=held, on_step=stop)
        except Stopped:
            pass
        teacher, student, train, held = odd_models_and_data()
        report = recover(student, teacher, train, dataclasses.replace(cfg, resume=True), eval_data=held)
        _write(out, f"rank{rank}.resumed", student, report)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
