"""``PruneReport``: what pruning changed, as data, a table and (on request) a bar chart."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compress.reports import Report


@dataclass
class LayerWidths:
    """One layer before and after pruning; ``source`` is its index in the unpruned model."""

    index: int
    source: int
    heads: tuple[int, int]
    kv_heads: tuple[int, int]
    mlp: tuple[int, int]
    sparsity: float  # the allocation's s_l (fraction of its initial widths to remove)
    params: tuple[int, int]  # prunable parameters (projections) before, after


@dataclass
class StageReport:
    """One stage of incremental pruning: its pruning, then its recovery training."""

    stage: int  # 1-based
    non_embedding_target: int
    non_embedding_after: int  # after this stage's pruning
    achieved_sparsity: float  # of the non-embedding parameters the whole call started from
    substeps: int
    calibration_tokens: int
    train_tokens: int
    train_steps: int
    peak_lr: float
    first_loss: float | None  # training loss of the stage's first and last step
    last_loss: float | None
    perplexity_before: float | None  # held-out, after this stage's pruning, before its training
    perplexity_after: float | None
    kl_before: float | None  # to the unpruned teacher, nats per token
    kl_after: float | None
    seconds: float


@dataclass
class PruneReport(Report):
    method: str
    importance: str
    target_sparsity: float
    params_before: int
    params_after: int
    non_embedding_before: int
    non_embedding_after: int
    layers: list[LayerWidths]
    dropped_layers: list[int] = field(default_factory=list)
    protected_layers: list[int] = field(default_factory=list)
    uniform: bool = True
    substeps: int = 0
    calibration_tokens: int = 0
    refitted: int = 0  # output projections refitted to the original's outputs after pruning
    skipped: list[str] = field(default_factory=list)
    stages: list[StageReport] = field(default_factory=list)  # incremental mode only

    @property
    def achieved_sparsity(self) -> float:
        """Fraction of non-embedding parameters removed."""
        return 1.0 - self.non_embedding_after / self.non_embedding_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "achieved_sparsity": self.achieved_sparsity}

    def table(self) -> str:
        head = ["layer", "from", "heads", "kv heads", "MLP width", "s_l", "params kept"]
        rows = [
            [
                str(w.index),
                str(w.source),
                _arrow(w.heads),
                _arrow(w.kv_heads),
                _arrow(w.mlp),
                f"{w.sparsity:.3f}",
                f"{w.params[1] / max(w.params[0], 1):.1%}",
            ]
            for w in self.layers
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = lambda r: "  ".join(v.rjust(n) for v, n in zip(r, widths))  # noqa: E731
        lines = [
            f"{self.method} pruning by {self.importance} importance: target {self.target_sparsity:.1%} of "
            f"non-embedding parameters, achieved {self.achieved_sparsity:.2%} in {self.substeps} sub-steps",
            f"parameters {self.params_before:,} -> {self.params_after:,}; non-embedding "
            f"{self.non_embedding_before:,} -> {self.non_embedding_after:,}; "
            f"{'uniform' if self.uniform else 'non-uniform'} layer widths",
            fmt(head),
            "  ".join("-" * n for n in widths),
            *map(fmt, rows),
        ]
        if self.refitted:
            lines.append(f"refitted {self.refitted} output projections (o, mlp_out) to the original layers' outputs")
        if self.dropped_layers:
            lines.append(f"dropped layers (original index): {self.dropped_layers}")
        if self.protected_layers:
            lines.append(f"protected layers (original index, full width): {self.protected_layers}")
        lines += [_stage_line(st) for st in self.stages]
        lines += [f"note: {s}" for s in self.skipped]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def save_plot(self, path: str | Path) -> Path:
        """A per-layer bar chart (MLP width and query heads kept, as fractions) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = [w.index for w in self.layers]
        fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(x) + 2), 3.5))
        ax.bar([i - 0.2 for i in x], [w.mlp[1] / w.mlp[0] for w in self.layers], 0.4, label="MLP width kept")
        ax.bar([i + 0.2 for i in x], [w.heads[1] / w.heads[0] for w in self.layers], 0.4, label="heads kept")
        ax.set(xlabel="layer", ylabel="fraction kept", ylim=(0, 1.05),
               title=f"{self.method}/{self.importance}: {self.achieved_sparsity:.1%} of non-embedding params removed")
        ax.legend(loc="lower right")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _stage_line(st: StageReport) -> str:
    ppl = ""
    if st.perplexity_before is not None and st.perplexity_after is not None:
        ppl = f", held-out perplexity {st.perplexity_before:.2f} -> {st.perplexity_after:.2f}"
    loss = f", loss {st.first_loss:.4f} -> {st.last_loss:.4f}" if st.first_loss is not None and st.last_loss is not None else ""
    return (
        f"stage {st.stage}: pruned to {st.non_embedding_after:,} non-embedding parameters "
        f"({st.achieved_sparsity:.1%} removed), trained {st.train_tokens:,} tokens in {st.train_steps} steps"
        f"{loss}{ppl}"
    )


def _arrow(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]} -> {pair[1]}"
