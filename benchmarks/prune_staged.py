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

Held-out perplexity, KL and top-1 agreement to the teacher on the eval split
of the built-in text (pruning calibrates on the calibration split, training
reads the train split).

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


def held_out(model, teacher, seqs: torch.Tensor, batch_size: int) -> dict[str, Any]:
    from compress.eval import EvalConfig, evaluate
    from compress.sizes import count_parameters

    rep = evaluate(model, seqs, reference=teacher, config=EvalConfig(batch_size=batch_size, max_sequences=None, progress=False))
    total, non_embedding = count_parameters(model)
    return {"perplexity": rep.model.perplexity, "loss": rep.model.loss, "kl": rep.kl_to_reference,
            "top1": rep.top1_agreement, "params": total, "params_non_embedding": non_embedding}


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
    say(f"one-shot: pruned {pr.achieved_sparsity:.1%}, perplexity {pruned['perplexity']:.1f}; distilling {args.tokens:,} tokens")
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

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    fp32 = result["rows"]["fp32 teacher"]["perplexity"]
    one = result["one_shot"]
    # x: training tokens seen; y: held-out perplexity (log)
    left.plot([0, one["train_tokens"]], [one["pruned, before training"]["perplexity"], one["after"]["perplexity"]],
              "o-", label=f"one-shot {result['sparsity']:.0%}, then distil")
    xs, ys, seen = [0], [fp32], 0
    for s in result["adapt_accel"]["stages"]:
        xs += [seen, seen + s["train_tokens"]]
        ys += [s["perplexity_before"], s["perplexity_after"]]
        seen += s["train_tokens"]
    left.plot(xs, ys, "s-", label=f"Adapt-Accel, {len(result['adapt_accel']['stages'])} stages")
    left.axhline(fp32, color="gray", ls="--", label="fp32 (unpruned)")
    left.set_yscale("log")
    left.set_xlabel("distillation tokens")
    left.set_ylabel("held-out perplexity")
    left.legend()
    left.grid(alpha=0.3)
    names = list(result["rows"])
    kls = [result["rows"][n]["kl"] or 0.0 for n in names]
    right.bar(range(len(names)), kls, color=["gray", "tab:blue", "tab:orange"][: len(names)])
    right.set_xticks(range(len(names)), names, fontsize=8)
    right.set_ylabel("KL to the unpruned model (nats/token)")
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{result['model']}: {result['sparsity']:.0%} pruned, {result['tokens']:,} distillation tokens "
                 f"({result['machine']['device']})")
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
    ap.add_argument("--eval-seqs", type=int, default=8)
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
    from compress.data import TextConfig

    start = time.perf_counter()
    teacher, tokenizer = compress.load_model(args.model, device=args.device)
    splits = compress.load_text(None, tokenizer, TextConfig(seq_len=args.seq_len))
    held = splits.eval[: args.eval_seqs]
    fp32 = held_out(teacher, None, held, args.batch_size)
    say(f"fp32 perplexity {fp32['perplexity']:.2f} on {len(held)} x {args.seq_len} held-out tokens")
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
                                                   "calib_seqs", "eval_seqs")},
        "rows": {"fp32 teacher": fp32, "one-shot + distil": one["after"],
                 f"Adapt-Accel ({args.stages} stages)": accel["after"]},
        "one_shot": one, "adapt_accel": accel,
        "notes": ["Both arms: Adapt-Pruner allocation, Taylor importance, the same sub-step and calibration size; "
                  "distillation (KL to the unpruned fp32 model) with AdamW and one WSD schedule over the arm's tokens.",
                  "Held-out: the first eval_seqs sequences of the built-in text's eval split; KL(teacher || model), "
                  "nats per token.",
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
        kl = "-" if row["kl"] is None else f"{row['kl']:.4f}"
        print(f"{name:28s} perplexity {row['perplexity']:9.2f}  KL {kl:>7s}  params {row['params']:,}")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
