"""The quality benchmark: ours against the peers at matched size, in one run, on two domains.

On SmolLM2-135M (default), every row is built from the same fp32 model,
calibrated and distilled on the library's default text (``--data default``:
half text the model generates itself, half the built-in Shakespeare, whose
held-out split stays out; ``--data shakespeare``: the plays alone, as before
issue 18), and measured on the same held-out sequences of two domains, the
fp32 model included: Shakespeare's held-out split (the calibration domain)
and the unseen ``news`` text (never calibrated or trained on):

    pruned to the same non-embedding parameter count (``--sparsity``), each then
    distilled from the fp32 model for the same token budget:
        Adapt-Pruner (ours, Taylor) | uniform magnitude | uniform Taylor | Torch-Pruning
    4-bit, post-training (no training for any row):
        int4 GPTQ (ours: the default, and with float zero points) | int4 RTN | bitsandbytes NF4 | HQQ 4-bit
    ternary (1.58-bit):
        post-training absmean | QAT + distillation (ours), the same token budget

Columns: parameters (non-embedding), stored size, bits per quantised weight,
per domain the held-out perplexity (and its ratio to fp32's), KL(fp32 || row)
and top-1 agreement, tokens/s of the evaluation forward on this machine.

    python benchmarks/quality.py                  # CPU-sized, ~1 h on 2 cores
    python benchmarks/quality.py --quick          # what the slow CI test runs (minutes; tiny budgets, noisy)
    python benchmarks/quality.py --device cuda --tokens 2000000 --eval-seqs 64   # the full version on a GPU

Peer details (why Torch-Pruning prunes MLP channels only, how NF4/HQQ are
set up) are in benchmarks/prune_quality.py and benchmarks/quant_quality.py,
whose row builders this script reuses.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
NAME = "quality"
RATIO_CAP = 10.0  # the plot's y axis: perplexity ratios to fp32 above this are drawn on the top edge


def _sibling(name: str) -> ModuleType:
    """benchmarks/ is not a package: load a sibling script by path."""
    spec = importlib.util.spec_from_file_location(f"compress_benchmarks_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def say(text: str) -> None:
    print(f"[quality] {text}", flush=True)


# --------------------------------------------------------------------------- rows

def recover_config(args: argparse.Namespace, **extra: Any):
    from compress.recovery import RecoverConfig

    budget = dict(tokens=args.tokens) if args.tokens else dict(steps=args.steps)
    return RecoverConfig(**budget, batch_size=args.batch_size, lr=args.lr, schedule="wsd",
                         eval_every=10**9, eval_sequences=args.train_eval_seqs, device=args.device,
                         progress=not args.quiet, **extra)


def distil(student: nn.Module, teacher: nn.Module, splits, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The same recovery budget for every trained row: KL distillation from the fp32 model."""
    from compress.recovery import recover

    t = time.perf_counter()
    report = recover(student, teacher, splits, recover_config(args, **extra))
    return {"recover_steps": report.steps, "recover_tokens": report.tokens, "recover_seconds": round(time.perf_counter() - t, 1)}


def pruned_rows(fp32: nn.Module, splits, args: argparse.Namespace, prune_bench: ModuleType) -> tuple[dict, dict]:
    """Each pruning method at ``args.sparsity``, then the same distillation budget."""
    calib = splits.calibration[: args.calib_seqs]
    pargs = argparse.Namespace(step=args.prune_step, calib_samples=args.calib_seqs, calib_seq_len=args.calib_seq_len,
                               calib_batch=args.batch_size)
    models, info = {}, {}
    methods = [("Adapt-Pruner (ours)", "adapt", "taylor"), ("uniform magnitude", "uniform", "magnitude"),
               ("uniform Taylor", "uniform", "taylor"), ("Torch-Pruning", None, None)]
    for label, method, importance in methods:
        say(f"{label}: pruning {args.sparsity:.0%}")
        m = copy.deepcopy(fp32)
        t = time.perf_counter()
        try:
            if method is None:
                how = prune_bench.prune_torch_pruning(m, args.sparsity, calib[:1])
            else:
                how = prune_bench.prune_ours(m, args.sparsity, method, importance, calib, pargs)
        except Exception as exc:  # a peer that fails here is a result, not a crash
            info[label] = {"group": "pruned", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        row = {"group": "pruned", "prune_seconds": round(time.perf_counter() - t, 1), "how": how.get("config", how)}
        if args.steps or args.tokens:
            say(f"{label}: distilling")
            row.update(distil(m, fp32, splits, args))
        models[label], info[label] = m, row
    return models, info


def quantised_rows(fp32: nn.Module, splits, args: argparse.Namespace, quant_bench: ModuleType) -> tuple[dict, dict]:
    """int4 (ours: GPTQ, RTN) and the 4-bit peers, post-training; ternary post-training."""
    qargs = argparse.Namespace(group_size=args.group_size, damp=args.damp, act_order=args.act_order, clip_search=True)
    models, info = quant_bench.build_rows(fp32, qargs, splits.calibration[: args.gptq_seqs], None, with_ternary=True)
    info.pop("fp32", None)
    models.pop("ternary absmedian", None)  # absmean is BitNet's; the quant benchmark has both
    info.pop("ternary absmedian", None)
    gptq = f"int4 GPTQ g{args.group_size}"
    if gptq in models:
        models[gptq + " (ours)"], info[gptq + " (ours)"] = models.pop(gptq), info.pop(gptq)
        models.update(float_zero_gptq_row(fp32, splits, args, info, quant_bench))
    for label, row in info.items():
        row["group"] = "ternary" if label.startswith("ternary") else "4-bit"
    return models, info


def float_zero_gptq_row(fp32: nn.Module, splits, args: argparse.Namespace, info: dict,
                        quant_bench: ModuleType) -> dict:
    """GPTQ with float zero points (asymmetric groups, ``zero_point="float"``): the README's headline int4 setting.
    Adds its info to ``info``; returns its model."""
    from compress.quantization import QuantConfig

    label = f"int4 GPTQ g{args.group_size} float zero points (ours)"
    say(label)
    calib = splits.calibration[: args.gptq_seqs]
    cfg = QuantConfig(group_size=args.group_size, gptq=True, symmetric=False, zero_point="float",
                      calibration_sequences=len(calib), damp=args.damp, act_order=args.act_order,
                      progress=not args.quiet)
    m, row, _ = quant_bench.quantised_copy(fp32, cfg, calib)
    info[label] = {"group": "4-bit", **row}
    return {label: m}


def ternary_qat_row(fp32: nn.Module, splits, args: argparse.Namespace) -> tuple[dict, dict]:
    """Ternary QAT with lambda warm-up and distillation from fp32, then packed: the same budget as the pruned rows."""
    from compress.quantization import QuantConfig, prepare_qat

    label = "ternary QAT + distillation (ours)"
    say(f"{label}")
    m = copy.deepcopy(fp32)
    prepare_qat(m, QuantConfig(method="ternary", scale="absmean"), qat_lambda=0.0)
    steps = recover_config(args).total_steps(args.batch_size * args.seq_len)
    row = {"group": "ternary", **distil(m, fp32, splits, args, qat_warmup_steps=max(1, steps // 2))}
    packed = [mod for mod in m.modules() if hasattr(mod, "packed_bytes")]
    if packed:
        stored = sum(mod.packed_bytes() for mod in packed)
        weights = sum(mod.in_features * mod.out_features for mod in packed)
        row["bits_per_weight"] = 8.0 * stored / weights
    return {label: m}, {label: row}


# --------------------------------------------------------------------------- measuring

def sizes(model: nn.Module) -> dict[str, Any]:
    from compress.sizes import bytes_on_disk, count_parameters

    total, non_emb = count_parameters(model)
    return {"params": total, "params_non_embedding": non_emb, "mib_stored": bytes_on_disk(model) / 2**20}


def measure(fp32: nn.Module, models: dict[str, nn.Module], info: dict[str, dict], held: dict[str, torch.Tensor],
            args: argparse.Namespace, quant_bench: ModuleType) -> list[dict[str, Any]]:
    """Per domain, one pass over the held-out batches: the fp32 logits once, every row compared to them."""
    scores = {}
    for domain, ids in held.items():
        say(f"evaluating {len(models) + 1} models on {ids.shape[0]} x {ids.shape[1]} held-out tokens of {domain}")
        scores[domain] = quant_bench.compare_causal(fp32, models, ids, args.batch_size)
    tokens = sum(ids.numel() for ids in held.values())
    rows = []
    for label in ["fp32", *info]:
        row = {"row": label, "group": "original" if label == "fp32" else info[label]["group"]}
        if label != "fp32" and "error" in info[label]:
            rows.append({**row, "error": info[label]["error"]})
            continue
        model = fp32 if label == "fp32" else models[label]
        row.update(sizes(model))
        extra = {} if label == "fp32" else info[label]
        if "model_mib" in extra and label not in _ours_quantised(info):
            # a peer's modules hold packed bytes in their own classes: take its own byte count, and the
            # logical parameter count of the unpruned model it was made from
            row["mib_stored"] = extra["model_mib"]
            row["params"], row["params_non_embedding"] = sizes(fp32)["params"], sizes(fp32)["params_non_embedding"]
        row["bits_per_weight"] = extra.get("bits_per_weight", 32.0)
        row["domains"] = {}
        for domain, by_row in scores.items():
            s, ref = by_row[label], by_row["fp32"]
            row["domains"][domain] = {
                "perplexity": s["perplexity"], "ratio": s["perplexity"] / ref["perplexity"],
                "kl_to_fp32": s["kl_to_fp32"], "top1_agreement": s["top1_agreement"],
                "per_sequence_nll": s["per_sequence_nll"], "per_sequence_kl": s["per_sequence_kl"]}
        seconds = sum(by_row[label]["forward_seconds"] for by_row in scores.values())
        row["tokens_per_s"] = tokens / seconds if seconds else None
        row["details"] = {k: v for k, v in extra.items() if k not in ("group", "bits_per_weight", "model_mib")}
        rows.append(row)
    return rows


def _ours_quantised(info: dict[str, dict]) -> set[str]:
    return {label for label, row in info.items() if str(row.get("how", "")).startswith("compress.quantize")}


# --------------------------------------------------------------------------- output

def table(result: dict[str, Any]) -> str:
    calib, unseen = result["domains"]
    head = (f"| row | group | non-emb params | stored MiB | bits/weight | {calib} ppl (x fp32, KL) | "
            f"**{unseen}** ppl (x fp32, KL) | {unseen} top-1 | tokens/s |")
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['group']} | failed: {r['error'][:80]} |||||||")
            continue
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else "-"
        c, u = r["domains"][calib], r["domains"][unseen]
        lines.append(f"| {r['row']} | {r['group']} | {r['params_non_embedding'] / 1e6:.1f} M | {r['mib_stored']:.0f} | "
                     f"{r['bits_per_weight']:.2f} | {_cell(c)} | {_cell(u)} | {u['top1_agreement']:.3f} | {tps} |")
    return "\n".join(lines)


def _cell(d: dict[str, float]) -> str:
    ppl = f"{d['perplexity']:.3g}" if d["perplexity"] >= 1e4 else f"{d['perplexity']:.2f}"
    ratio = f"{d['ratio']:.3g}x" if d["ratio"] >= 100 else f"{d['ratio']:.2f}x"
    return f"{ppl} ({ratio}, {d['kl_to_fp32']:.3f})"


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"original": "black", "pruned": "tab:blue", "4-bit": "tab:orange", "ternary": "tab:green"}
    domains = list(result["domains"])
    fig, axes = plt.subplots(1, len(domains), figsize=(7 * len(domains), 5))
    for ax, domain in zip(axes, domains):
        for r in result["rows"]:
            if "error" in r:
                continue
            ours = "ours" in r["row"]
            ratio = r["domains"][domain]["ratio"]
            shown = min(ratio, RATIO_CAP)  # rows off the scale sit on its top edge, labelled with their ratio
            ax.scatter(r["mib_stored"], shown, color=colours[r["group"]], marker="*" if ours else "o",
                       s=140 if ours else 50, zorder=3)
            label = r["row"] if ratio <= RATIO_CAP else f"{r['row']} ({ratio:.3g}x, off scale)"
            ax.annotate(label, (r["mib_stored"], shown), fontsize=6, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(0.95, RATIO_CAP * 1.2)
        ax.set_xlabel("stored size (MiB, log)")
        ax.set_ylabel(f"held-out perplexity on {domain} / fp32's (log)")
        ax.set_title(result["domains"][domain], fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    budget = result["settings"]["recover_budget"]
    fig.suptitle(f"{result['model']}: quality against size ({budget}; calibrated on {result['settings']['data']}; "
                 f"{result['machine']['device']})", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sparsity", type=float, default=0.3, help="pruned rows: fraction of non-embedding parameters removed")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="recovery steps per trained row (default 16; --quick 2)")
    budget.add_argument("--tokens", type=int, default=None, help="recovery tokens per trained row instead of steps")
    p.add_argument("--data", choices=("default", "shakespeare"), default="default",
                   help="calibration and distillation text: the library's default (half generated, half Shakespeare) "
                        "or the plays alone")
    p.add_argument("--generate-tokens", type=int, default=8192, help="tokens of generated text (cached; the library's default)")
    p.add_argument("--calibration-fraction", type=float, default=0.5,
                   help="share of the calibration text's sequences for calibration (the rest trains; as the default recipe)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-seqs", type=int, default=16, help="held-out sequences every row is measured on")
    p.add_argument("--train-eval-seqs", type=int, default=4, help="held-out sequences for recover's own before/after check")
    p.add_argument("--calib-seqs", type=int, default=32, help="calibration sequences for the pruning scores")
    p.add_argument("--gptq-seqs", type=int, default=128,
                   help="calibration sequences for GPTQ (at most the calibration split; 128 as the library's default)")
    p.add_argument("--calib-seq-len", type=int, default=64, help="Adapt-Pruner's calibration windows")
    p.add_argument("--prune-step", type=float, default=0.05, help="Adapt-Pruner sub-step (the paper's 0.02 takes 15 recalibrations)")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--no-act-order", dest="act_order", action="store_false", help="GPTQ in plain column order")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny budgets for a CI check (numbers are noisy)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.eval_seqs, args.calib_seqs, args.gptq_seqs, args.seq_len, args.calib_seq_len = 4, 4, 4, 64, 32
        args.prune_step, args.train_eval_seqs = max(args.prune_step, 0.1), 2
        args.steps = args.steps if args.steps or args.tokens else 2
    elif not (args.steps or args.tokens):
        args.steps = 16
    import compress
    from compress.data import BUILTIN_TEXT, DEFAULT_SOURCE, UNSEEN_TEXT, TextConfig, evaluation_domains
    from compress.generated import GenerateConfig

    torch.manual_seed(0)
    started = time.perf_counter()
    prune_bench, quant_bench = _sibling("prune_quality"), _sibling("quant_quality")
    fp32, tokenizer = compress.load_model(args.model, device=args.device)
    fp32.eval()
    text = TextConfig(seq_len=args.seq_len, calibration_fraction=args.calibration_fraction)
    source = DEFAULT_SOURCE if args.data == "default" else BUILTIN_TEXT
    splits = compress.load_text(source, tokenizer, text, model=fp32,
                                generate=GenerateConfig(tokens=args.generate_tokens, progress=not args.quiet))
    # the library's report domains (a mix's own held-out split dropped): Shakespeare's held-out split, which a
    # mix keeps out of calibration and training, and the unseen text
    domains = evaluation_domains(tokenizer, source, text, splits=splits)
    held = {d: domains[d][: args.eval_seqs].to(args.device) for d in (BUILTIN_TEXT, UNSEEN_TEXT)}
    say(f"calibration and distillation on {args.data}: {len(splits.calibration)} calibration and "
        f"{len(splits.train)} training sequences of {args.seq_len} tokens")

    models, info = pruned_rows(fp32, splits, args, prune_bench)
    for build in (lambda: quantised_rows(fp32, splits, args, quant_bench), lambda: ternary_qat_row(fp32, splits, args)):
        m, i = build()
        models.update(m)
        info.update(i)
    for m in models.values():
        m.eval()
    with torch.no_grad():
        rows = measure(fp32, models, info, held, args, quant_bench)

    budget = f"{args.tokens} tokens" if args.tokens else f"{args.steps} steps x {args.batch_size} x {args.seq_len} tokens"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    result = {
        "benchmark": NAME, "model": args.model, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"device": device, "platform": platform.platform(), "torch": torch.__version__},
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "recover_budget": budget},
        "data": {"source": args.data, "fingerprint": splits.fingerprint, "calibration_sequences": len(splits.calibration),
                 "gptq_sequences": min(args.gptq_seqs, len(splits.calibration)), "training_sequences": len(splits.train)},
        "domains": {BUILTIN_TEXT: "held-out Shakespeare (calibration domain)"
                    if args.data == "shakespeare" else "held-out Shakespeare (half the calibration text's domain)",
                    UNSEEN_TEXT: "unseen news text (never calibrated or trained on)"},
        "held_out": {d: {"sequences": int(ids.shape[0]), "seq_len": int(ids.shape[1])} for d, ids in held.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / (NAME + ("-quick" if args.quick else ""))
    from compress.io.atomic import write_text
    write_text(stem.with_suffix(".json"), json.dumps(result, indent=2))
    plot(result, stem.with_suffix(".png"))
    print(table(result))
    say(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
