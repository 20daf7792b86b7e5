"""Adapt-Accel against one-shot pruning at the same training budget, on SmolLM2-135M.

Both arms prune the same share of the non-embedding parameters with
Adapt-Pruner (Taylor importance) and train the same number of tokens by
distillation from the unpruned fp32 model (the teacher, measured in the same
run):

- ``one-shot``: prune to the target, then distil for all the tokens.
- ``Adapt-Accel``: ``--stages`` stages; stage k prunes to ``N0 * (1 - s*k/T)``
  and then distils on its own shard of the tokens (linear split: later stages
  train longer), one warm-up/stable/decay schedule across the stages
  (``PruneConfig(stages=..., stage_tokens=...)``).

Pruning calibrates on, and training reads, the library's default text
(``--data default``: half text the model generates itself, half the built-in
Shakespeare; ``--data shakespeare``: the plays alone). Held-out perplexity,
KL and top-1 agreement to the teacher on two domains: Shakespeare's held-out
split (which the mix keeps out) and the unseen ``news`` text (never
calibrated or trained on).

    python benchmarks/prune_staged.py                     # CPU budget; JSON + PNG in benchmarks/results/
    python benchmarks/prune_staged.py --device cuda --tokens 20000000 --batch-size 16 --seq-len 1024 --eval-seqs 64
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "prune_staged"
_T0 = time.perf_counter()


def say(what: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {what}", flush=True)


def held_out(model, teacher, held: dict[str, torch.Tensor], batch_size: int) -> dict[str, Any]:
    """Parameter counts, and per domain the perplexity, loss, KL(teacher || model) and top-1 agreement."""
    from compress.eval import EvalConfig, evaluate_domains
    from compress.sizes import count_parameters

    total, non_embedding = count_parameters(model)
    reports = evaluate_domains(model, held, teacher, EvalConfig(batch_size=batch_size, max_sequences=None, progress=False))
    return {"params": total, "params_non_embedding": non_embedding,
            "domains": {domain: {"perplexity": rep.model.perplexity, "loss": rep.model.loss,
                                 "kl": rep.kl_to_reference, "top1": rep.top1_agreement}
                        for domain, rep in reports.reports.items()}}


def _ppl(row: dict[str, Any]) -> str:
    return ", ".join(f"{d} {v['perplexity']:.1f}" for d, v in row["domains"].items())


def recover_template(args: argparse.Namespace):
    from compress.recovery import RecoverConfig

    return RecoverConfig(batch_size=args.batch_size, lr=args.lr, schedule="wsd", warmup_fraction=0.1,
                         decay_fraction=0.2, eval_every=0, eval_sequences=args.eval_seqs, device=args.device,
                         progress=not args.quiet)


def prune_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(method="adapt", importance="taylor", round_to=args.round_to, step=args.step,
                calib_samples=args.calib_seqs, calib_seq_len=min(64, args.seq_len), batch_size=args.batch_size,
                progress=not args.quiet)


def one_shot(args, teacher, splits, held) -> dict[str, Any]:
    from dataclasses import replace

    from compress.api import prune, recover
    from compress.pruning import PruneConfig

    t0 = time.perf_counter()
    student = copy.deepcopy(teacher)
    pr = prune(student, PruneConfig(sparsity=args.sparsity, **prune_kwargs(args)), splits)
    pruned = held_out(student, teacher, held, args.batch_size)
    say(f"one-shot: pruned {pr.achieved_sparsity:.1%}, perplexity {_ppl(pruned)}; distilling {args.tokens:,} tokens")
    rep = recover(student, teacher, splits, replace(recover_template(args), tokens=args.tokens))
    after = held_out(student, teacher, held, args.batch_size)
    return {"pruned, before training": pruned, "after": after, "achieved_sparsity": pr.achieved_sparsity,
            "train_tokens": rep.tokens, "train_steps": rep.steps, "seconds": time.perf_counter() - t0}


def staged(args, teacher, splits, held) -> dict[str, Any]:
    from compress.api import prune  # the verb: stages > 1 go to compress.staged
    from compress.pruning import PruneConfig

    t0 = time.perf_counter()
    student = copy.deepcopy(teacher)
    cfg = PruneConfig(sparsity=args.sparsity, stages=args.stages, stage_tokens=args.tokens // args.stages,
                      stage_split="linear", recover=recover_template(args), **prune_kwargs(args))
    pr = prune(student, cfg, splits)
    after = held_out(student, teacher, held, args.batch_size)
    stages = [{k: getattr(s, k) for k in ("stage", "achieved_sparsity", "train_tokens", "train_steps", "peak_lr",
                                          "perplexity_before", "perplexity_after", "kl_before", "kl_after", "seconds")}
              for s in pr.stages]
    say(f"Adapt-Accel: pruned {pr.achieved_sparsity:.1%} in {args.stages} stages")
    return {"after": after, "achieved_sparsity": pr.achieved_sparsity, "stages": stages,
            "train_tokens": sum(s["train_tokens"] for s in stages), "train_steps": sum(s["train_steps"] for s in stages),
            "seconds": time.perf_counter() - t0}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = list(result["domains"])
    names = list(result["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(domains)
    for ax, key, label, log in ((axes[0], "perplexity", "held-out perplexity", True),
                                (axes[1], "kl", "KL to the unpruned model (nats/token)", False)):
        for k, domain in enumerate(domains):
            values = [result["rows"][n]["domains"][domain][key] or 0.0 for n in names]
            xs = [i + (k - (len(domains) - 1) / 2) * width for i in range(len(names))]
            ax.bar(xs, values, width, label=result["domains"][domain])
            for x, v in zip(xs, values):
                ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['model']}: {result['sparsity']:.0%} pruned, {result['tokens']:,} distillation tokens of "
                 f"{result['settings']['data']} text ({result['machine']['device']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {os.cpu_count()} cores"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=15360, help="distillation tokens of each arm (default 15360)")
    ap.add_argument("--step", type=float, default=0.1, help="Adapt-Pruner sub-step (both arms)")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--eval-seqs", type=int, default=8, help="held-out sequences per domain")
    ap.add_argument("--data", choices=("default", "shakespeare"), default="default",
                    help="calibration and distillation text: the library's default (half generated, half Shakespeare) "
                         "or the plays alone")
    ap.add_argument("--generate-tokens", type=int, default=8192, help="tokens of generated text (cached; the library's default)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out-dir", default=str(RESULTS_DIR))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("prune_staged.py --device cuda needs a CUDA GPU and none is visible here; drop --device for the CPU run.",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    import compress
    import transformers
    from compress.data import BUILTIN_TEXT, DEFAULT_SOURCE, UNSEEN_TEXT, TextConfig, evaluation_domains
    from compress.generated import GenerateConfig

    start = time.perf_counter()
    teacher, tokenizer = compress.load_model(args.model, device=args.device)
    text = TextConfig(seq_len=args.seq_len)
    source = DEFAULT_SOURCE if args.data == "default" else BUILTIN_TEXT
    splits = compress.load_text(source, tokenizer, text, model=teacher,
                                generate=GenerateConfig(tokens=args.generate_tokens, progress=not args.quiet))
    # the library's report domains (a mix's own held-out split dropped): Shakespeare's held-out split, which a
    # mix keeps out of calibration and training, and the unseen text
    domains = evaluation_domains(tokenizer, source, text, splits=splits)
    held = {d: domains[d][: args.eval_seqs].to(args.device) for d in (BUILTIN_TEXT, UNSEEN_TEXT)}
    fp32 = held_out(teacher, None, held, args.batch_size)
    say(f"fp32 perplexity {_ppl(fp32)} on {args.eval_seqs} x {args.seq_len} held-out tokens per domain; "
        f"{len(splits.train)} training sequences of {args.data} text")
    one = one_shot(args, teacher, splits, held)
    accel = staged(args, teacher, splits, held)
    result = {
        "benchmark": NAME,
        "command": ("python benchmarks/prune_staged.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"device": _device_name(args.device), "threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "load_average_at_end": list(os.getloadavg())},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model": args.model, "sparsity": args.sparsity, "tokens": args.tokens,
        "settings": {k: getattr(args, k) for k in ("stages", "step", "round_to", "batch_size", "seq_len", "lr",
                                                   "calib_seqs", "eval_seqs", "data", "generate_tokens")},
        "data": {"source": args.data, "fingerprint": splits.fingerprint, "training_sequences": len(splits.train),
                 "calibration_sequences": len(splits.calibration)},
        "domains": {BUILTIN_TEXT: "held-out Shakespeare", UNSEEN_TEXT: "unseen news (never calibrated or trained on)"},
        "rows": {"fp32 teacher": fp32, "one-shot + distil": one["after"],
                 f"Adapt-Accel ({args.stages} stages)": accel["after"]},
        "one_shot": one, "adapt_accel": accel,
        "notes": ["Both arms: Adapt-Pruner allocation, Taylor importance, the same sub-step and calibration size; "
                  "distillation (KL to the unpruned fp32 model) with AdamW and one WSD schedule over the arm's tokens.",
                  "Held-out: the first eval_seqs sequences of the built-in text's eval split and of the news text; "
                  "KL(teacher || model), nats per token. The stages' own perplexity_before / after are measured by "
                  "compress.staged on the training text's held-out split.",
                  "The built-in SmolLM2-135M was dequantised from a Q4_1 GGUF; 'fp32 teacher' is that model in fp32."],
        "seconds": time.perf_counter() - start,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else "-" + re.sub(r"[^a-z0-9]+", "-", _device_name(args.device).lower()).strip("-")
    stem = out_dir / f"{NAME}{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, stem.with_suffix(".png"))
    for name, row in result["rows"].items():
        for domain, d in row["domains"].items():
            kl = "-" if d["kl"] is None else f"{d['kl']:.4f}"
            print(f"{name:28s} {domain:12s} perplexity {d['perplexity']:9.2f}  KL {kl:>7s}  params {row['params']:,}")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
