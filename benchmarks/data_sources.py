"""Which calibration and distillation text makes a compressed model hold up on text it never saw?

The same recipe as `make demo` (prune 20% with Adapt-Pruner and Taylor
scores -> distil from the original -> int4 g64 GPTQ with zero points) on
SmolLM2-135M, with every calibration (pruning scores, GPTQ Hessians) and the
distillation reading one of:

- ``shakespeare``: the built-in plays (the old default);
- ``generated``: text the original model wrote itself (``compress.generated``,
  cached on disk, its generation time reported);
- ``mix``: generated and Shakespeare, half the tokens each (Shakespeare's own
  held-out split is kept out of it).

Every row is evaluated on two domains: Shakespeare's held-out split and the
unseen built-in "news" text (never used for calibration or training); the
original is measured in the same run.  JSON + PNG in benchmarks/results/.

    python benchmarks/data_sources.py                        # the CPU budget of `make demo`
    python benchmarks/data_sources.py --steps 64 --eval-seqs 32 --device cuda
    # arms in parallel processes, then one result (each process measures the original; they must agree):
    python benchmarks/data_sources.py --sources mix --out /tmp/mix.json
    python benchmarks/data_sources.py --merge a.json b.json /tmp/mix.json
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "data_sources"
SOURCES = {"shakespeare": "shakespeare", "generated": "generated", "mix": {"generated": 0.5, "shakespeare": 0.5}}
_T0 = time.perf_counter()


def say(what: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {what}", flush=True)


def measure(model, teacher, domains: dict[str, torch.Tensor], batch_size: int) -> dict[str, Any]:
    from compress.eval import EvalConfig, evaluate_domains

    rep = evaluate_domains(model, domains, teacher, EvalConfig(batch_size=batch_size, max_sequences=None, progress=False))
    return {d: {"perplexity": r.model.perplexity, "reference_perplexity": r.reference.perplexity if r.reference else None,
                "ratio": rep.ratio(d), "kl": r.kl_to_reference, "top1": r.top1_agreement, "sequences": r.sequences}
            for d, r in rep.reports.items()}


def arm(args, name: str, teacher, tokenizer, domains) -> dict[str, Any]:
    from compress.data import TextConfig, load_text
    from compress.generated import GenerateConfig
    from compress.pruning import PruneConfig, prune
    from compress.quantization import QuantConfig, quantize
    from compress.recovery import RecoverConfig, recover

    t0 = time.perf_counter()
    text = TextConfig(seq_len=args.seq_len, seed=0, calibration_fraction=args.calibration_fraction)
    gen = GenerateConfig(tokens=args.generate_tokens, progress=not args.quiet)
    splits = load_text(SOURCES[name], tokenizer, text, model=teacher, generate=gen)
    load_s = time.perf_counter() - t0
    say(f"{name}: {len(splits.calibration)} calibration / {len(splits.train)} training sequences ({load_s:.0f} s to load)")
    student = copy.deepcopy(teacher)
    pr = prune(student, PruneConfig(sparsity=args.sparsity, method="adapt", importance="taylor", round_to=64, step=0.1,
                                    calib_samples=args.calib_samples, calib_seq_len=64, batch_size=8,
                                    progress=not args.quiet), splits)
    say(f"{name}: pruned {pr.achieved_sparsity:.1%}; distilling {args.steps} steps x {args.batch_size} x {args.seq_len}")
    rc = RecoverConfig(steps=args.steps, batch_size=args.batch_size, lr=2e-4, warmup_fraction=0.1, eval_every=0,
                       progress=not args.quiet)
    recover(student, teacher, splits.train, rc)
    quantize(student, QuantConfig(method="int4", group_size=64, symmetric=False, gptq=True,
                                  calibration_sequences=args.gptq_seqs), data=splits.calibration[: args.gptq_seqs])
    say(f"{name}: quantised; evaluating")
    row = {"source": name, "data": SOURCES[name], "load_seconds": load_s, "calibration_sequences": len(splits.calibration),
           "train_sequences": len(splits.train), "domains": measure(student, teacher, domains, args.batch_size)}
    row["seconds"] = time.perf_counter() - t0
    say(f"{name}: " + ", ".join(f"{d} {v['perplexity']:.2f} ({v['ratio']:.2f}x, KL {v['kl']:.3f})" for d, v in row["domains"].items()))
    return row


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    domains = list(result["original"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(domains)
    for k, d in enumerate(domains):
        xs = [i + k * width for i in range(len(rows))]
        ax.bar(xs, [r["domains"][d]["ratio"] for r in rows], width, label=d)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + width * (len(domains) - 1) / 2 for i in range(len(rows))], [r["source"] for r in rows])
    ax.set_xlabel("calibration and distillation text")
    ax.set_ylabel("perplexity / original's")
    ax.set_title("SmolLM2-135M, prune 20% -> distil -> int4 g64 GPTQ")
    ax.legend(title="evaluated on")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def merge(paths: list[str], out: str) -> int:
    """One result from several runs of this script with the same settings, each measuring the original."""
    from compress.io.atomic import write_json

    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    keep = {k: v for k, v in first["settings"].items() if k not in ("sources", "out", "merge", "quiet")}
    for p, part in zip(paths, parts):
        settings = {k: v for k, v in part["settings"].items() if k not in ("sources", "out", "merge", "quiet")}
        if settings != keep:
            raise SystemExit(f"{p} was run with other settings ({settings}) than {paths[0]} ({keep}).")
        for d, v in part["original"].items():
            if abs(v["perplexity"] - first["original"][d]["perplexity"]) > 1e-6 * v["perplexity"]:
                raise SystemExit(f"{p} measured the original differently on {d}: the runs are not comparable.")
    rows = [r for part in parts for r in part["rows"]]
    result = {**first, "rows": rows, "merged_from": [{"command": part["command"], "date": part["date"],
                                                       "machine": part["machine"]} for part in parts]}
    result["command"] = " && ".join(part["command"] for part in parts)
    result["winner"] = min(rows, key=lambda r: r["domains"]["news"]["ratio"])["source"]
    write_json(out, result)
    png = plot(result, Path(out).with_suffix(".png"))
    say(f"winner on the unseen domain: {result['winner']}; wrote {out} and {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--sparsity", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=8, help="distillation steps (default 8, as make demo)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--calibration-fraction", type=float, default=0.5, help="as the default recipe (default 0.5)")
    p.add_argument("--calib-samples", type=int, default=16, help="pruning calibration windows of 64 tokens")
    p.add_argument("--gptq-seqs", type=int, default=8)
    p.add_argument("--generate-tokens", type=int, default=4096, help="tokens of generated text, cached (default 4096, as the default recipe)")
    p.add_argument("--eval-seqs", type=int, default=8, help="held-out sequences per domain")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default=str(RESULTS_DIR / f"{NAME}.json"))
    p.add_argument("--merge", nargs="+", metavar="JSON", help="join the rows of partial results (same settings) into --out")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)

    import compress
    from compress.data import TextConfig, eval_only_sequences, load_text
    from compress.io.atomic import write_json

    teacher, tokenizer = compress.load_model("smollm2-135m", device=args.device)
    text = TextConfig(seq_len=args.seq_len, seed=0, calibration_fraction=args.calibration_fraction)
    domains = {"shakespeare": load_text("shakespeare", tokenizer, text).eval[: args.eval_seqs],
               "news": eval_only_sequences("news", tokenizer, text)[: args.eval_seqs]}
    original = measure(teacher, None, domains, args.batch_size)
    say("original: " + ", ".join(f"{d} {v['perplexity']:.2f}" for d, v in original.items()))
    rows = []
    result = {"benchmark": NAME, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/data_sources.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
                          "torch": torch.__version__, "python": platform.python_version(),
                          "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                          "note": "2 CPU cores shared with other jobs (contended): times are not speeds"},
              "settings": vars(args), "original": original, "rows": rows}
    for name in args.sources:
        rows.append(arm(args, name, teacher, tokenizer, domains))
        write_json(args.out, result)  # partial results survive an interruption
    result["winner"] = min(rows, key=lambda r: r["domains"]["news"]["ratio"])["source"]
    write_json(args.out, result)
    png = plot(result, Path(args.out).with_suffix(".png"))
    say(f"winner on the unseen domain: {result['winner']}; wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
