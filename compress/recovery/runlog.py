"""What a run shows and keeps: the progress bar, the JSON log, the loss curve."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

LOG = "log.json"
PLOT = "loss.png"


class RunLog:
    """Training losses and evaluations, written as ``output_dir/log.json`` (rank 0 only)."""

    def __init__(self, output_dir: str | None, meta: dict[str, Any], enabled: bool = True) -> None:
        self.path = Path(output_dir) / LOG if output_dir and enabled else None
        self.meta = meta
        self.train: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps so a resumed run's log is the uninterrupted one's."""
        return {"train": self.train, "evals": self.evals}

    def restore(self, state: dict[str, Any]) -> None:
        self.train, self.evals = list(state.get("train", [])), list(state.get("evals", []))

    def write(self) -> Path | None:
        if self.path is None:
            return None
        from compress.io.atomic import write_json

        doc = {**self.meta, "train": self.train, "evals": self.evals, "summary": self.summary}
        return write_json(self.path, doc)  # readers never see half a file

    def plot(self, path: Path) -> Path:
        """Training loss per step and held-out loss per evaluation, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")  # no display needed; set before pyplot is imported
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        if self.train:
            ax.plot([e["step"] for e in self.train], [e["loss"] for e in self.train], lw=1, label="training loss")
        evals = [e for e in self.evals if e.get("loss") is not None]
        if evals:
            ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="held-out CE")
            kl = [e for e in evals if e.get("kl") is not None]
            if kl:
                ax.plot([e["step"] for e in kl], [e["kl"] for e in kl], "s--", label="held-out KL to teacher")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("nats / token")
        ax.set_title(self.meta.get("objective", "recovery"))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


class Progress:
    """tqdm over optimiser steps with loss, learning rate and tokens/s; ETA from tqdm."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, initial=start, desc="recover", unit="step", disable=not enabled, dynamic_ncols=True)
        self.t0, self.tokens = time.perf_counter(), 0

    def update(self, tokens: int, loss: float, lr: float, extra: dict[str, str] | None = None) -> float:
        """Advance one step; return tokens/s since the bar started (this process's run, all ranks)."""
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix({"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{rate:,.0f}", **(extra or {})}, refresh=False)
        self.bar.update(1)
        return rate

    def write(self, message: str) -> None:
        if not self.bar.disable:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
