"""One rank of the two-process test: ``python -m torch.distributed.run --nproc_per_node 2 ddp_worker.py OUT``.

Every rank builds the same teacher, student and data, calls ``recover``
unchanged (it joins the group torchrun describes), and writes its final
weights and its report to OUT/rank{r}.*.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from compress.recover import RecoverConfig, recover  # noqa: E402
from tests.recover.helpers import damaged_copy, sharp_teacher, token_data  # noqa: E402

PER_RANK_BATCH = 2
STEPS = 6


def config(out: Path, batch_size: int) -> RecoverConfig:
    return RecoverConfig(steps=STEPS, batch_size=batch_size, grad_accum=2, lr=1e-3, schedule="cosine",
                         warmup_fraction=0.2, eval_every=3, checkpoint_every=3, output_dir=str(out), progress=False)


def models_and_data():
    teacher = sharp_teacher()
    ids = token_data(40, 16)
    return teacher, damaged_copy(teacher), ids[:32], ids[32:]


def main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    teacher, student, train, held = models_and_data()
    report = recover(student, teacher, train, config(out / "run", PER_RANK_BATCH), eval_data=held)
    save_file({n: p.detach().contiguous() for n, p in student.named_parameters()}, out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(json.dumps(report.to_dict()))


if __name__ == "__main__":
    main()
