"""Quantisation quality on real models: held-out perplexity, KL and top-1 agreement to fp32, stored bits.

One run measures, on SmolLM2-135M, in two domains: the eval split of the
built-in Shakespeare (the calibration domain) and the eval split of the
built-in unseen "news" text (never used for calibration); the fp32 model is
the reference and is evaluated in the same pass:

    fp32 | int4 RTN gG | int4 GPTQ gG | bitsandbytes NF4 | HQQ 4-bit gG | ternary absmean | ternary absmedian

``--ablate`` adds our int4 rows with one default switched off (RTN and GPTQ
without the clip search, GPTQ without act_order), quantised in this process.

GPTQ calibrates on the calibration split, in a fresh process that also records
its wall time and peak memory (ru_maxrss with the high-water mark reset after
the model is loaded); the parent reloads its checkpoint with ``compress.load``.
Ternary rows are post-training, without recovery training.  The int4 rows are
then repeated on MiniLM-L6 (a BERT encoder without an MLM head, so the measure
is the cosine of mean-pooled embeddings to fp32, from ``compress.evaluate``).

The built-in SmolLM2 was dequantised from a Q4_1 GGUF (blocks of 32 along the
input dimension): its weights already lie on a 4-bit grid, which a g32
asymmetric quantiser would reproduce almost exactly.  At g128 the grids do
not line up; MiniLM (float weights) is the cleaner comparison.

    python benchmarks/quant_quality.py                      # JSON + PNG in benchmarks/results/
    python benchmarks/quant_quality.py --eval-seqs 8 --calib-seqs 16 --skip-encoder   # quicker
    python benchmarks/quant_quality.py --group-size 64 --eval-seqs 8 --skip-encoder --skip-ternary --ablate
    python benchmarks/quant_quality.py --gptq-only /tmp/smollm2-gptq --calib-seqs 64  # GPTQ time and memory only
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from compress.machine import process_memory_mib, reset_peak_memory

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "quant_quality"


# --------------------------------------------------------------------------- memory

def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------- GPTQ in a fresh process

def gptq_only(args: argparse.Namespace) -> dict[str, Any]:
    """Load the model, GPTQ-quantise it on the calibration split, save it; write timings and memory as JSON."""
    rss_runtime = process_memory_mib()  # interpreter + torch + transformers, before any model
    import compress
    from compress.data import TextConfig
    from compress.quantization import QuantConfig

    rss_runtime = max(rss_runtime or 0.0, process_memory_mib() or 0.0)
    model, tokenizer = compress.load_model(args.model)
    fp32_bytes = sum(p.nbytes for p in model.parameters())
    splits = compress.load_text(None, tokenizer, TextConfig(seq_len=args.seq_len))
    calib = splits.calibration[: args.calib_seqs]
    rss_before = process_memory_mib()
    peak_reset = reset_peak_memory()
    cfg = QuantConfig(group_size=args.group_size, gptq=True, calibration_sequences=args.calib_seqs,
                      damp=args.damp, act_order=args.act_order, clip_search=args.clip_search, progress=True)
    start = time.perf_counter()
    report = compress.quantize(model, cfg, data=calib)
    seconds = time.perf_counter() - start
    peak = _maxrss_mib()
    compress.save(model, args.gptq_only, tokenizer, overwrite=True)
    result = {
        "config": cfg.label(), "damp": cfg.damp, "act_order": cfg.act_order, "true_sequential": cfg.true_sequential,
        "clip_search": cfg.clip_search,
        "calibration_sequences": int(calib.shape[0]), "seq_len": int(calib.shape[1]),
        "seconds": seconds, "threads": torch.get_num_threads(),
        "fp32_model_mib": fp32_bytes / 2**20,
        "rss_runtime_mib": rss_runtime, "rss_before_gptq_mib": rss_before,
        "peak_rss_during_gptq_mib": peak if peak_reset else None, "peak_reset_worked": peak_reset,
        "ru_maxrss_mib": peak,
        "bits_per_weight": report.bits_per_weight, "modules": len(report.modules),
    }
    if peak_reset:
        used = peak - rss_runtime
        result["peak_over_runtime_mib"] = used
        result["peak_over_runtime_vs_fp32_model"] = used / result["fp32_model_mib"]
        result["peak_vs_fp32_model"] = peak / result["fp32_model_mib"]
    (Path(args.gptq_only) / "gptq_run.json").write_text(json.dumps(result, indent=2))
    return result


def run_gptq_fresh(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--gptq-only", str(out_dir), "--model", args.model,
           "--seq-len", str(args.seq_len), "--calib-seqs", str(args.calib_seqs), "--group-size", str(args.group_size),
           "--damp", str(args.damp)] + ([] if args.act_order else ["--no-act-order"]) \
        + ([] if args.clip_search else ["--no-clip-search"])
    print(f"[gptq] fresh process: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out_dir / "gptq_run.json").read_text())


# --------------------------------------------------------------------------- baselines from other libraries

def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def nf4_linear(lin: nn.Linear) -> tuple[nn.Module, int]:
    """bitsandbytes NF4 at its defaults (blocks of 64, double-quantised absmax), as load_in_4bit makes."""
    import bitsandbytes as bnb

    new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                            compute_dtype=torch.float32, quant_type="nf4")
    new.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4")
    if lin.bias is not None:
        new.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    new = new.to("cpu")  # Params4bit quantises when it is moved to its device
    state = new.weight.quant_state
    if state is None or new.weight.dtype != torch.uint8:
        raise RuntimeError("bitsandbytes did not quantise the weight on the CPU")
    stored = new.weight.nbytes + sum(t.nbytes for t in state.as_dict(packed=True).values() if torch.is_tensor(t))
    return new, stored


def hqq_linear(lin: nn.Linear, group_size: int) -> tuple[nn.Module, int]:
    """HQQ 4-bit (half-quadratic optimised zero points), its BaseQuantizeConfig defaults but the group size."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    new = HQQLinear(lin, BaseQuantizeConfig(nbits=4, group_size=group_size), compute_dtype=torch.float32, device="cpu")
    stored = new.W_q.nbytes + sum(v.nbytes for k, v in new.meta.items() if torch.is_tensor(v) and k in ("scale", "zero"))
    return new, stored


def replace_with(model: nn.Module, names: list[str], make: Callable[[nn.Linear], tuple[nn.Module, int]]) -> dict:
    """Swap ``names`` for modules from ``make``; return the stored bytes and weight count."""
    stored = weights = 0
    for name in names:
        lin = model.get_submodule(name)
        weights += lin.weight.numel()
        new, nbytes = make(lin)
        stored += nbytes
        _set(model, name, new)
    return {"stored_bytes": stored, "weights": weights, "bits_per_weight": 8.0 * stored / weights}


# --------------------------------------------------------------------------- rows

def quantised_copy(model: nn.Module, cfg, data=None) -> tuple[nn.Module, dict, list[str]]:
    """A copy of ``model`` quantised by ``compress.quantize``, what it stores, and the names of its quantised modules."""
    import compress

    m = copy.deepcopy(model)
    t = time.perf_counter()
    report = compress.quantize(m, cfg, data=data)
    info = {"bits_per_weight": report.bits_per_weight, "weights": report.weights_quantised,
            "stored_bytes": report.packed_bytes, "quantise_seconds": time.perf_counter() - t,
            "how": f"compress.quantize {cfg.label()}"}
    return m, info, [r.name for r in report.modules]


def build_rows(model: nn.Module, args: argparse.Namespace, calib: Optional[torch.Tensor], gptq_dir: Optional[Path],
               with_ternary: bool) -> tuple[dict[str, nn.Module], dict[str, dict]]:
    """Every compressed copy of ``model`` and what it stores (bits per quantised weight, how built)."""
    import compress
    from compress.quantization import QuantConfig

    G = args.group_size
    fp32_bytes = sum(p.nbytes for p in model.parameters())
    models: dict[str, nn.Module] = {}
    info: dict[str, dict] = {"fp32": {"bits_per_weight": 32.0, "model_mib": fp32_bytes / 2**20, "how": "the reference"}}

    def ours(label: str, cfg: QuantConfig, data=None) -> list[str]:
        models[label], info[label], names = quantised_copy(model, cfg, data)
        return names

    print(f"[rows] int4 RTN g{G}", flush=True)
    clip = getattr(args, "clip_search", True)
    targets = ours(f"int4 RTN g{G}", QuantConfig(group_size=G, clip_search=clip, progress=False))
    if gptq_dir is not None:
        loaded, _ = compress.load(gptq_dir)
        run = json.loads((gptq_dir / "gptq_run.json").read_text())
        weights = info[f"int4 RTN g{G}"]["weights"]
        stored = sum(m.packed_bytes() for m in loaded.modules() if hasattr(m, "packed_bytes"))
        models[f"int4 GPTQ g{G}"] = loaded
        info[f"int4 GPTQ g{G}"] = {"bits_per_weight": 8.0 * stored / weights, "weights": weights, "stored_bytes": stored,
                                   "quantise_seconds": run["seconds"], "gptq_run": run,
                                   "how": f"compress.quantize {run['config']} (fresh process, reloaded with compress.load)"}
    elif calib is not None:
        print(f"[rows] int4 GPTQ g{G}", flush=True)
        ours(f"int4 GPTQ g{G}", QuantConfig(group_size=G, gptq=True, calibration_sequences=len(calib), damp=args.damp,
                                            act_order=args.act_order, clip_search=clip, progress=True), calib)
    if getattr(args, "ablate", False):
        ablations = [(f"int4 RTN g{G} no clip search", QuantConfig(group_size=G, clip_search=False, progress=False), None)]
        if calib is not None:
            gptq = dict(group_size=G, gptq=True, calibration_sequences=len(calib), damp=args.damp, progress=True)
            ablations += [
                (f"int4 GPTQ g{G} no clip search", QuantConfig(**gptq, act_order=args.act_order, clip_search=False), calib),
                (f"int4 GPTQ g{G} no act_order", QuantConfig(**gptq, act_order=False, clip_search=clip), calib),
            ]
        for label, cfg, data in ablations:
            print(f"[rows] {label}", flush=True)
            ours(label, cfg, data)
    for label, make, how in [
        ("bnb NF4", nf4_linear, "bitsandbytes Linear4bit nf4, blocksize 64, compress_statistics (defaults)"),
        (f"HQQ 4-bit g{G}", lambda lin: hqq_linear(lin, G), f"hqq HQQLinear BaseQuantizeConfig(nbits=4, group_size={G}), axis 1"),
    ]:
        print(f"[rows] {label}", flush=True)
        m = copy.deepcopy(model)
        t = time.perf_counter()
        try:
            info[label] = {**replace_with(m, targets, make), "quantise_seconds": time.perf_counter() - t, "how": how}
            models[label] = m
        except Exception as exc:  # a peer library that fails on this machine is a result, not a crash
            info[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "how": how}
    if with_ternary:
        for scale in ("absmean", "absmedian"):
            print(f"[rows] ternary {scale}", flush=True)
            ours(f"ternary {scale}", QuantConfig(method="ternary", scale=scale, progress=False))
    other = fp32_bytes - 4 * info[f"int4 RTN g{G}"]["weights"]  # embeddings, norms, biases stay as they are
    for label, d in info.items():
        if "stored_bytes" in d:
            d["model_mib"] = (other + d["stored_bytes"]) / 2**20
    return models, info


# --------------------------------------------------------------------------- causal LM comparison

@torch.no_grad()
def compare_causal(reference: nn.Module, models: dict[str, nn.Module], held: torch.Tensor, batch_size: int) -> dict:
    """Perplexity, KL(fp32 || model) and top-1 agreement per row, every row on the same batches.

    Position t predicts token t+1 (the last position has no target), as compress.evaluate.
    Per-sequence sums are kept for paired comparisons.
    """
    names = ["fp32", *models]
    seq = {n: {"nll": [], "kl": [], "agree": []} for n in names}
    seconds = {n: 0.0 for n in names}
    for b, ids in enumerate(held.split(batch_size)):
        print(f"[eval] batch {b + 1}/{math.ceil(len(held) / batch_size)}", flush=True)
        t = time.perf_counter()
        ref = reference(input_ids=ids).logits[:, :-1].float().log_softmax(-1)
        seconds["fp32"] += time.perf_counter() - t
        targets = ids[:, 1:]
        p_ref, ref_top = ref.exp(), ref.argmax(-1)
        for name in names:
            if name == "fp32":
                logp = ref
            else:
                t = time.perf_counter()
                logp = models[name](input_ids=ids).logits[:, :-1].float().log_softmax(-1)
                seconds[name] += time.perf_counter() - t
            nll = -logp.gather(-1, targets[..., None]).squeeze(-1)
            kl = (p_ref * (ref - logp)).sum(-1).clamp_min(0)
            seq[name]["nll"] += nll.sum(1).tolist()
            seq[name]["kl"] += kl.sum(1).tolist()
            seq[name]["agree"] += (logp.argmax(-1) == ref_top).sum(1).tolist()
            del logp
    per_seq = targets.shape[1]
    out = {}
    for name in names:
        n = per_seq * len(seq[name]["nll"])
        out[name] = {
            "perplexity": math.exp(sum(seq[name]["nll"]) / n),
            "kl_to_fp32": sum(seq[name]["kl"]) / n,
            "top1_agreement": sum(seq[name]["agree"]) / n,
            "forward_seconds": seconds[name],
            "per_sequence_kl": [k / per_seq for k in seq[name]["kl"]],
            "per_sequence_nll": [v / per_seq for v in seq[name]["nll"]],
        }
    return out


def paired(a: list[float], b: list[float], seed: int = 0, draws: int = 2000) -> dict:
    """Mean of a - b over sequences, a 95% bootstrap interval, and how often a < b."""
    d = torch.tensor(a) - torch.tensor(b)
    g = torch.Generator().manual_seed(seed)
    means = d[torch.randint(0, len(d), (draws, len(d)), generator=g)].mean(1).sort().values
    return {"mean_diff": d.mean().item(), "ci95": [means[int(0.025 * draws)].item(), means[int(0.975 * draws) - 1].item()],
            "fraction_a_lower": (d < 0).float().mean().item()}


# --------------------------------------------------------------------------- the two parts

def causal_part(args: argparse.Namespace, gptq_dir: Optional[Path]) -> dict:
    import compress
    from compress.data import TextConfig
    from compress.eval import EvalConfig

    from compress.data import UNSEEN_TEXT

    model, tokenizer = compress.load_model(args.model)
    model.eval()
    splits = compress.load_text(None, tokenizer, TextConfig(seq_len=args.seq_len))
    unseen = compress.load_text(UNSEEN_TEXT, tokenizer, TextConfig(seq_len=args.seq_len))
    held = {"shakespeare": splits.eval[: args.eval_seqs], UNSEEN_TEXT: unseen.eval[: args.eval_seqs]}
    models, info = build_rows(model, args, splits.calibration[: args.calib_seqs], gptq_dir, with_ternary=not args.skip_ternary)
    for m in models.values():
        m.eval()
    results = {}
    for domain, ids in held.items():
        print(f"[eval] {domain}: {len(ids)} held-out sequences x {args.seq_len} tokens, {len(models) + 1} rows", flush=True)
        results[domain] = compare_causal(model, models, ids, args.batch_size)
    G = args.group_size
    rows = {}
    for label, d in info.items():
        # the calibration domain's figures stay at the top level (as before); every domain under "domains"
        rows[label] = {**d, **results["shakespeare"].get(label, {}),
                       "domains": {dom: res[label] for dom, res in results.items() if label in res}}
        for dom, res in results.items():
            if label in res:
                rows[label]["domains"][dom]["ppl_ratio_to_fp32"] = res[label]["perplexity"] / res["fp32"]["perplexity"]
    comparisons = {}
    gptq = f"int4 GPTQ g{G}"
    for domain, res in results.items():
        for other in (f"int4 RTN g{G}", "bnb NF4", f"HQQ 4-bit g{G}"):
            if gptq in res and other in res:
                comparisons[f"{domain}: {gptq} vs {other}"] = {
                    "kl": paired(res[gptq]["per_sequence_kl"], res[other]["per_sequence_kl"]),
                    "nll": paired(res[gptq]["per_sequence_nll"], res[other]["per_sequence_nll"]),
                }
    held = held["shakespeare"]
    # The loop above re-implements compress.evaluate's measures to evaluate the reference once for all rows;
    # check it against compress.evaluate on the first batch.
    check = None
    if gptq in models:
        first = held[: args.batch_size]
        rep = compress.evaluate(models[gptq], first, reference=model,
                                config=EvalConfig(batch_size=args.batch_size, max_sequences=len(first), progress=False))
        mine = compare_causal(model, {gptq: models[gptq]}, first, args.batch_size)[gptq]
        check = {"sequences": len(first), "compress.evaluate": {"perplexity": rep.model.perplexity, "kl": rep.kl_to_reference,
                                                                "top1": rep.top1_agreement},
                 "this script": {"perplexity": mine["perplexity"], "kl": mine["kl_to_fp32"], "top1": mine["top1_agreement"]}}
    return {"model": args.model, "eval_sequences": len(held), "calibration_sequences": min(args.calib_seqs, len(splits.calibration)),
            "seq_len": args.seq_len, "text": splits.describe() if hasattr(splits, "describe") else None,
            "unseen_text": unseen.describe(), "domains": list(results),
            "rows": rows, "gptq_vs_others": comparisons, "cross_check_first_batch": check}


def encoder_part(args: argparse.Namespace) -> dict:
    import compress
    from compress.data import TextConfig
    from compress.eval import EvalConfig

    model, tokenizer = compress.load_model(args.encoder)
    model.eval()
    splits = compress.load_text(None, tokenizer, TextConfig(seq_len=args.encoder_seq_len))
    held = splits.eval[: args.encoder_eval_seqs]
    calib = splits.calibration[: args.encoder_calib_seqs]
    models, info = build_rows(model, args, calib, None, with_ternary=False)
    cfg = EvalConfig(batch_size=8, max_sequences=len(held), progress=False)
    rows = {}
    for label, d in info.items():
        row = dict(d)
        if label in models or label == "fp32":
            m = models.get(label, model)
            m.eval()
            print(f"[encoder] {label}", flush=True)
            rep = compress.evaluate(m, held, reference=model, config=cfg)
            row.update(objective=rep.objective, embedding_cosine=rep.embedding_cosine,
                       one_minus_cosine=1.0 - rep.embedding_cosine, forward_seconds=rep.tokens / rep.model.tokens_per_second)
        rows[label] = row
    return {"model": args.encoder, "eval_sequences": len(held), "calibration_sequences": len(calib),
            "seq_len": args.encoder_seq_len, "measure": "cosine of mean-pooled last hidden states to fp32 (compress.evaluate)",
            "rows": rows}


# --------------------------------------------------------------------------- output

def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one panel per evaluation domain of the causal model (KL to fp32), and the encoder's
    parts = [("causal", d, f"KL to fp32 (nats/token), {d} held-out", "kl_to_fp32")
             for d in result["causal"].get("domains", [None])]
    if result.get("encoder"):
        parts.append(("encoder", None, "1 - cosine to fp32 (mean-pooled)", "one_minus_cosine"))
    fig, axes = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 4.6))
    axes = [axes] if len(parts) == 1 else axes
    for ax, (key, domain, ylabel, metric) in zip(axes, parts):
        def value(row: dict) -> Optional[float]:
            return (row.get("domains", {}).get(domain) or {}).get(metric) if domain else row.get(metric)

        rows = {k: v for k, v in result[key]["rows"].items() if value(v) is not None and k != "fp32"}
        placed: list[tuple[float, float]] = []
        for label, row in rows.items():
            x, y = row["bits_per_weight"], max(value(row), 1e-6)
            # labels of points on top of each other (the two ternary rows) are stacked, not overprinted
            stack = sum(abs(x - px) < 0.05 and abs(math.log10(y / py)) < 0.05 for px, py in placed)
            placed.append((x, y))
            ax.scatter(x, y, s=40)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 3 - 11 * stack), fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("stored bits per quantised weight (scales and zeros included)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{result[key]['model']}: {result[key]['eval_sequences']} held-out x {result[key]['seq_len']} tokens")
        ax.grid(alpha=0.3)
    fig.suptitle(f"post-training quantisation vs fp32 ({result['machine']['device']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(result: dict) -> str:
    lines = []
    c = result["causal"]
    domains = c.get("domains", ["shakespeare"])
    lines.append(f"{c['model']}: {c['eval_sequences']} held-out x {c['seq_len']} tokens per domain ({', '.join(domains)}); "
                 f"GPTQ on {c['calibration_sequences']} x {c['seq_len']} Shakespeare")
    head = " | ".join(f"{d} ppl (x fp32) | {d} KL | {d} top-1" for d in domains)
    lines.append(f"| method | bits/weight | {head} |")
    lines.append("| --- | ---: |" + " ---: | ---: | ---: |" * len(domains))
    for label, r in c["rows"].items():
        if "error" in r:
            lines.append(f"| {label} | - | failed: {r['error']} |" + " |" * (3 * len(domains) - 1))
            continue
        cells = []
        for d in domains:
            m = r.get("domains", {}).get(d, r)
            ratio = m.get("ppl_ratio_to_fp32", float("nan"))
            cells.append(f"{m['perplexity']:.2f} ({ratio:.3f}x) | {m['kl_to_fp32']:.4f} | {m['top1_agreement']:.4f}")
        lines.append(f"| {label} | {r['bits_per_weight']:.3f} | " + " | ".join(cells) + " |")
    if result.get("encoder"):
        e = result["encoder"]
        lines.append("")
        lines.append(f"{e['model']}: {e['eval_sequences']} held-out x {e['seq_len']} tokens; GPTQ on {e['calibration_sequences']} x {e['seq_len']}")
        lines.append("| method | bits/weight | cosine to fp32 | 1 - cosine |")
        lines.append("| --- | ---: | ---: | ---: |")
        for label, r in e["rows"].items():
            if "error" in r:
                lines.append(f"| {label} | - | failed: {r['error']} | |")
                continue
            lines.append(f"| {label} | {r['bits_per_weight']:.3f} | {r['embedding_cosine']:.6f} | {r['one_minus_cosine']:.2e} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--encoder", default="minilm-l6")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-seqs", type=int, default=32)
    ap.add_argument("--calib-seqs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--no-act-order", dest="act_order", action="store_false", help="GPTQ in plain column order")
    ap.add_argument("--no-clip-search", dest="clip_search", action="store_false", help="our int4 rows with min-max ranges")
    ap.add_argument("--ablate", action="store_true",
                    help="add our int4 rows with one default off: RTN/GPTQ without clip search, GPTQ without act_order")
    ap.add_argument("--skip-ternary", action="store_true")
    ap.add_argument("--encoder-seq-len", type=int, default=256)
    ap.add_argument("--encoder-eval-seqs", type=int, default=64)
    ap.add_argument("--encoder-calib-seqs", type=int, default=64)
    ap.add_argument("--skip-encoder", action="store_true")
    ap.add_argument("--in-process-gptq", action="store_true", help="run GPTQ here instead of a fresh process (no memory figure)")
    ap.add_argument("--output", default=str(RESULTS_DIR / NAME), help="path stem of the .json and .png")
    ap.add_argument("--gptq-only", metavar="DIR",
                    help="only GPTQ-quantise --model in this process and save it to DIR, with DIR/gptq_run.json "
                         "(wall time, peak memory); the full run calls this in a fresh process")
    args = ap.parse_args(argv)
    if args.gptq_only:
        print(json.dumps(gptq_only(args), indent=2))
        return 0

    start = time.perf_counter()
    command = "python benchmarks/quant_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="quant-quality-") as tmp:
        gptq_dir = None
        if not args.in_process_gptq:
            gptq_dir = Path(tmp) / "gptq"
            run_gptq_fresh(args, gptq_dir)
        causal = causal_part(args, gptq_dir)
    encoder = None if args.skip_encoder else encoder_part(args)
    import bitsandbytes
    import hqq
    import transformers

    result = {
        "benchmark": NAME,
        "command": command.strip(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"device": f"CPU, {os.cpu_count()} cores", "threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "bitsandbytes": bitsandbytes.__version__, "hqq": getattr(hqq, "__version__", "?")},
        "seconds": time.perf_counter() - start,
        "notes": [
            "bits_per_weight: bytes actually stored for the quantised linear weights (codes, scales, zero points, "
            "quantisation metadata) x 8 / their number of weights; embeddings, norms and the tied lm_head stay fp32.",
            "SmolLM2-135M was dequantised from a Q4_1 GGUF (blocks of 32): its weights already lie on a 4-bit grid; "
            "MiniLM (float weights) is the cleaner int4 comparison.",
            "Hidden size 576 is not a multiple of 128: our int4 g128 ends each row of q/k/v/o/gate/up in a partial "
            "group of 64 (scales [5, N]); HQQ groups the flattened weight, so its groups of 128 straddle rows there; "
            "bitsandbytes blocks of 64 divide 576.",
            "HQQ runs with compute_dtype float32 on the CPU, so its scale and zero are stored in float32 "
            "(4.5 bits); with float16 metadata (its GPU default) the same weights would store 4.25 bits.",
            "Ternary rows are post-training (no recovery training); BitNet-style ternary needs QAT (compress.recover).",
        ],
        "causal": causal,
        "encoder": encoder,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    from compress.io.atomic import write_text
    write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(table(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')} in {result['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
