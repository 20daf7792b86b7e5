"""``RunReport``: one row per stage (size, bits per weight, held-out quality, speed), as text, Markdown, JSON and PNGs.

The PNGs reuse the stages' own reports: the pruning report's per-layer bar
chart, recovery's loss curve, and one perplexity-versus-size chart with the
original model on it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.reports import Report

REPORT_MD, REPORT_JSON, SIZE_PLOT = "report.md", "report.json", "size-vs-perplexity.png"
_SIZE_COLUMNS = ("stage", "params", "on disk", "bits/weight", "bits/weight layers")
_COLUMNS = (*_SIZE_COLUMNS, "perplexity", "KL", "top-1", "tokens/s", "time")  # a report without domains (older runs)


@dataclass
class RunReport(Report):
    """What a run did: the recipe, the model and text it ran on, every stage's record, the files it wrote."""

    recipe: dict[str, Any]
    output_dir: str
    model: dict[str, Any]
    data: dict[str, Any]
    machine: dict[str, Any]
    original: dict[str, Any]  # {"size": ..., "eval": ...} of the uncompressed model
    stages: list[dict[str, Any]]  # each stage's stage.json
    final_checkpoint: str | None
    exports: list[dict[str, Any]] = field(default_factory=list)
    preflight: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    # -- rows ----------------------------------------------------------------
    def domains(self) -> list[str]:
        """The evaluation domains, calibration domain first (none for a run written before there were several)."""
        return list(((self.original.get("eval") or {}).get("domains") or {}))

    def unseen(self) -> str | None:
        return (self.original.get("eval") or {}).get("unseen")

    def columns(self) -> list[str]:
        domains, unseen = self.domains(), self.unseen()
        if not domains:
            return list(_COLUMNS)
        cols = [*_SIZE_COLUMNS, *[f"ppl {d}" for d in domains]]
        if unseen:
            cols.append(f"x original ({unseen})")
        head = unseen or domains[0]
        return [*cols, f"KL {head}", f"top-1 {head}", f"KL {domains[0]}", "tokens/s", "time"]

    def rows(self) -> list[list[str]]:
        domains, unseen = self.domains(), self.unseen()
        rows = [_row(f"original ({self.model.get('name', 'model')})", self.original, reference=True, domains=domains,
                     unseen=unseen, original=self.original)]
        for rec in self.stages:
            if rec["kind"] == "export":
                continue
            name = f"{rec['index']}. {rec['label']}" + (" (fake-quant, QAT next)" if rec.get("qat") else "")
            rows.append(_row(name, rec, reference=False, domains=domains, unseen=unseen, original=self.original))
        return rows

    def headline_ratio(self) -> float | None:
        """The final stage's perplexity over the original's on the unseen domain (text no calibration or training saw)."""
        unseen = self.unseen()
        final = [r for r in self.stages if r["kind"] != "export" and not r.get("qat")]
        if not unseen or not final:
            return None
        return _ratio(final[-1], self.original, unseen)

    def table(self) -> str:
        columns = self.columns()
        rows = [columns, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
        fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
        ev = self.original.get("eval") or {}
        lines = [fmt(rows[0]), "  ".join("-" * w for w in widths), *map(fmt, rows[1:])]
        per = ev.get("domains") or {"": ev}
        stored = (self.original.get("size") or {}).get("stored_dtype")
        lines.append("(held-out: " + "; ".join(f"{d + ' ' if d else ''}{v.get('sequences', '?')} sequences x {v.get('seq_len', '?')} tokens"
                                                for d, v in per.items())
                     + f"; KL and top-1 agreement against the original; tokens/s of the forward pass on {self.machine.get('device', '?')}"
                     + (f"; on disk: the weights file with floats in {stored}, as exported" if stored else "") + ")")
        ratio = self.headline_ratio()
        if ratio is not None:
            lines.append(f"headline: the final model's perplexity is {ratio:.2f}x the original's on {self.unseen()}, "
                         f"text no calibration or training of this run saw")
        return "\n".join(lines)

    # -- files ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "unseen": self.unseen(), "headline_ratio": self.headline_ratio()}

    def markdown(self) -> str:
        out = Path(self.output_dir)
        rows = self.rows()
        columns = self.columns()
        ratio = self.headline_ratio()
        lines = [
            f"# compress-lm run: {self.recipe.get('name', 'recipe')}",
            "",
            f"Model `{self.model.get('name')}` (fingerprint `{self.model.get('fingerprint')}`), text "
            f"{_sources(self.data)} (fingerprint `{self.data.get('fingerprint')}`, calibration sha256 "
            f"`{self.data.get('calibration_sha256', '')[:16]}`), on {self.machine.get('summary', '?')}; "
            f"{self.seconds / 60:.1f} minutes in this process.",
            "",
            *([f"**Headline: the final model's perplexity is {ratio:.2f}x the original's on {self.unseen()}**, "
               f"text no calibration or training of this run saw.", ""] if ratio is not None else []),
            "| " + " | ".join(columns) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|",
            *["| " + " | ".join(r) + " |" for r in rows],
            "",
            "Bits per weight: bytes of the weights file x 8 / parameters (tied tensors once; embeddings included); "
            "`layers`: the same inside the decoder layers only.  Perplexity, KL(original || stage) in nats per token "
            "and top-1 agreement on held-out sequences the run never trained or calibrated on, per domain: "
            + ", ".join(f"`{d}`" for d in self.domains()) + (f" (`{self.unseen()}` is a built-in text no calibration or "
                                                             f"training uses by default)" if self.unseen() else "") + ".",
        ]
        for name, path in self.plots.items():
            lines += ["", f"## {name}", "", f"![{name}]({_rel(path, out)})"]
        for rec in self.stages:
            lines += ["", f"## Stage {rec['index']}: {rec['label']}", ""]
            if rec.get("checkpoint"):
                lines.append(f"Checkpoint: `{_rel(rec['checkpoint'], out)}` (reopen with `compress.load`).")
            text = rec.get("summary")
            if text:
                lines += ["", "```", text.rstrip(), "```"]
        if self.exports:
            lines += ["", "## Exports", ""]
            lines += [f"- `{e['format']}`: `{_rel(e['path'], out)}` ({e.get('bytes', 0) / 2**20:,.1f} MiB)" for e in self.exports]
        if self.notes or self.preflight.get("notes"):
            lines += ["", "## Notes", ""] + [f"- {n}" for n in [*self.preflight.get("notes", []), *self.notes]]
        lines += ["", "## Recipe", "", "```yaml", _yaml(self.recipe).rstrip(), "```", ""]
        return "\n".join(lines)

    def write(self, directory: str | Path) -> list[Path]:
        """report.md, report.json and the PNGs into ``directory``; the paths written."""
        directory = Path(directory)
        self.plots = make_plots(self, directory)
        from compress.io.atomic import write_json, write_text

        md = write_text(directory / REPORT_MD, self.markdown())
        return [md, write_json(directory / REPORT_JSON, self.to_dict()), *map(Path, self.plots.values())]


def _ratio(rec: dict[str, Any], original: dict[str, Any], domain: str) -> float | None:
    a = ((rec.get("eval") or {}).get("domains") or {}).get(domain, {}).get("perplexity")
    b = ((original.get("eval") or {}).get("domains") or {}).get(domain, {}).get("perplexity")
    return a / b if a is not None and b else None


def _row(name: str, rec: dict[str, Any], reference: bool, domains: list[str] | None = None, unseen: str | None = None,
         original: dict[str, Any] | None = None) -> list[str]:
    size, ev = rec.get("size") or {}, rec.get("eval") or {}
    head = [
        name,
        _m(size.get("params")),
        _mib(size.get("disk_bytes")),
        _f(size.get("bits_per_weight"), 2),
        _f(size.get("bits_per_weight_layers"), 2),
    ]
    tail = [_f(ev.get("tokens_per_second"), 0), "-" if reference else f"{rec.get('seconds', 0):.0f} s"]
    if not domains:
        return [*head, _f(ev.get("perplexity"), 2), "-" if reference else _f(ev.get("kl"), 4),
                "-" if reference else _f(ev.get("top1"), 3), *tail]
    per = ev.get("domains") or {}
    cells = [_f(per.get(d, {}).get("perplexity"), 2) for d in domains]
    if unseen:
        cells.append("1.00" if reference else _f(_ratio(rec, original or {}, unseen), 2))
    h = per.get(unseen or domains[0], {})
    cal = per.get(domains[0], {})
    cells += ["-" if reference else _f(h.get("kl"), 4), "-" if reference else _f(h.get("top1"), 3),
              "-" if reference else _f(cal.get("kl"), 4)]
    return [*head, *cells, *tail]


def _m(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} M"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def _f(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _rel(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _sources(data: dict[str, Any]) -> str:
    sources = data.get("sources") or []
    if data.get("builtin"):
        label = data.get("label")
        if label and label != "shakespeare":
            return f"the default text (`{label}`)"
        return "the built-in text (Shakespeare's plays)"
    return ", ".join(f"`{s}`" for s in sources[:3]) + (" ..." if len(sources) > 3 else "") if sources else "given as tokens"


def _yaml(d: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


# -- plots ---------------------------------------------------------------------

def make_plots(report: RunReport, directory: Path) -> dict[str, str]:
    """Per-layer widths of each prune stage, loss curves of each recover stage, perplexity against size."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        report.notes.append("matplotlib is not installed, so the report has no charts (pip install 'compress-lm[plots]').")
        return {}
    plots: dict[str, str] = {}
    for rec in report.stages:
        tag = f"{rec['index']:02d}-{rec['kind']}"
        result = rec.get("result") or {}
        if rec["kind"] == "prune" and result.get("layers"):
            plots[f"Layer widths after stage {rec['index']} (prune)"] = str(_prune_plot(result, directory / f"widths-{tag}.png"))
        elif rec["kind"] == "recover" and result.get("train"):
            plots[f"Loss curve of stage {rec['index']} (recover)"] = str(_loss_plot(result, directory / f"loss-{tag}.png"))
    plots["Perplexity against size"] = str(_size_plot(report, directory / SIZE_PLOT))
    return plots


def _prune_plot(result: dict[str, Any], path: Path) -> Path:
    from compress.pruning.report import LayerWidths, PruneReport

    names = {f.name for f in dataclasses.fields(PruneReport)}
    layer_names = {f.name for f in dataclasses.fields(LayerWidths)}
    d = {k: v for k, v in result.items() if k in names}
    d["layers"] = [LayerWidths(**{k: v for k, v in row.items() if k in layer_names}) for row in result["layers"]]
    return PruneReport(**d).save_plot(path)


def _loss_plot(result: dict[str, Any], path: Path) -> Path:
    from compress.recovery.runlog import RunLog

    log = RunLog(None, {"objective": result.get("objective", "recovery")})
    log.train, log.evals = list(result.get("train") or []), list(result.get("evals") or [])
    return log.plot(path)


def _size_plot(report: RunReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [("original", report.original)] + [
        (f"{r['index']}. {r['kind']}", r) for r in report.stages if r["kind"] != "export" and not r.get("qat")
    ]
    domains = report.domains() or [None]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, domain in enumerate(domains):
        xs, ys, labels = [], [], []
        for label, rec in points:
            size, ev = rec.get("size") or {}, rec.get("eval") or {}
            ppl = ev.get("perplexity") if domain is None else (ev.get("domains") or {}).get(domain, {}).get("perplexity")
            if size.get("disk_bytes") and ppl is not None:
                xs.append(size["disk_bytes"] / 2**20)
                ys.append(ppl)
                labels.append(label)
        if not xs:
            continue
        color = f"C{k}"
        name = domain or "held-out"
        ax.plot(xs[1:], ys[1:], "o-", color=color, label=f"stages, {name}" + (" (unseen)" if domain == report.unseen() else ""))
        ax.plot(xs[:1], ys[:1], "*", color=color, markersize=14, label=f"original, {name}")
        for x, y, label in zip(xs, ys, labels):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set_xlabel("weights on disk (MiB)")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.set_title(f"{report.model.get('name', 'model')}: {report.recipe.get('name', 'recipe')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
