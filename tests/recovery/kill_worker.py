"""Runs the resume tests' training and kills its own process (SIGKILL: no cleanup, no finally) after step K.

``python kill_worker.py OUT K``
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.recovery.helpers import resumable_run  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)  # as in the test process: the same kernels, the same bits
    out, kill_at = Path(sys.argv[1]), int(sys.argv[2])

    def die(info):
        if info.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    resumable_run(out, on_step=die)


if __name__ == "__main__":
    main()
