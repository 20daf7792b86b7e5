"""Runs the resume test's recipe and kills its own process (SIGKILL: no cleanup, no finally) part-way.

``python kill_worker.py MODEL_DIR TEXT_FILE OUT prune``      dies in the prune stage, after its first surgery
``python kill_worker.py MODEL_DIR TEXT_FILE OUT recover:K``  dies in the recover stage, after optimiser step K
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import compress  # noqa: E402
from tests.pipeline.helpers import Inputs, tiny_recipe  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    torch.set_num_threads(1)  # as in the test process: the same kernels, the same bits
    model, text, out, mode = sys.argv[1:5]
    if mode == "prune":
        from compress.pruning.pruner import _Pruning

        def shrink_then_die(self, *args, **kwargs):
            die()

        _Pruning.shrink_layer = shrink_then_die
    else:
        from compress.recovery.runlog import Progress

        kill_at, real, steps = int(mode.split(":")[1]), Progress.update, []

        def update_then_die(self, *args, **kwargs):
            rate = real(self, *args, **kwargs)
            steps.append(1)
            if len(steps) == kill_at:
                die()
            return rate

        Progress.update = update_then_die
    compress.run(None, tiny_recipe(Inputs(Path(model), Path(text))), out, progress=False)
    raise SystemExit("the run finished without being killed")


if __name__ == "__main__":
    main()
