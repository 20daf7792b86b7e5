"""Size on disk against quality on SmolLM2-135M: a ``--target-size`` sweep beside the uniform formats.

One run loads SmolLM2-135M (float32, the original, measured in the same run)
and builds, each from a fresh copy:

    uniform int4 and int3 RTN g128 / g64 / g32, each with the embedding table kept (bfloat16), int8 or int4 g32
    (a quantised table's codes chosen by GPTQ against the head's inputs on the calibration text, the default
    embedding_rounding, as the budgets choose them)
    uniform ternary absmean, with the embedding table kept or int4 g32
    bitsandbytes NF4 and HQQ 4-bit g64 (benchmarks/quant_quality.py's builders; embedding kept)
    size budgets (QuantConfig(target_size=...)), round-to-nearest, without int3 among the candidates
    (int4 / ternary / keep: what fits a GGUF file of the same size) for each of --targets,
    with every candidate (the default since int3 exports) for each of --int3-targets,
    and with GPTQ on the chosen modules for each of --gptq-targets (80MiB, without int3) and --int3-gptq-targets

The size budget measures every projection's error once (layer-error, the
default metric, on calibration windows of the default text: the model's own
generated text, cached under ~/.cache/compress-lm), and the later targets are
planned from the same errors.  Every row of ours is saved with
``compress.save`` (bfloat16 storage) and its ``model.safetensors`` measured;
NF4 / HQQ are not checkpoints of ours: their size is their packed bytes
(as bitsandbytes and HQQ hold them) plus the rest of the model in bfloat16.

Each row is evaluated on held-out Shakespeare (the built-in text's eval split)
and on the unseen "news" text: perplexity and KL(original || row) per token,
--windows x --seq-len tokens each, the original's distributions computed once.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/size_quality.py          # JSON + PNG in benchmarks/results/
    python benchmarks/size_quality.py --targets 70MiB 90MiB --gptq-targets --skip-peers --windows 4    # quicker
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_quality import hqq_linear, nf4_linear, replace_with  # noqa: E402  (reused builders)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "size_quality"
MiB = 2**20


@torch.no_grad()
def reference_logprobs(model: nn.Module, ids: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return [model(input_ids=b).logits[:, :-1].float().log_softmax(-1) for b in ids.split(batch)]


@torch.no_grad()
def evaluate(model: nn.Module, ids: torch.Tensor, refs: list[torch.Tensor], batch: int) -> dict[str, float]:
    """Perplexity and KL(original || model) per token (position t predicts t+1), on the same batches as ``refs``."""
    nll = kl = agree = 0.0
    n = 0
    for b, ref in zip(ids.split(batch), refs):
        logp = model(input_ids=b).logits[:, :-1].float().log_softmax(-1)
        targets = b[:, 1:]
        nll += float(-logp.gather(-1, targets[..., None]).sum())
        kl += float((ref.exp() * (ref - logp)).sum(-1).clamp_min(0).sum())
        agree += float((logp.argmax(-1) == ref.argmax(-1)).sum())
        n += targets.numel()
    return {"perplexity": math.exp(nll / n), "kl": kl / n, "top1": agree / n}


def saved_bytes(model: nn.Module) -> int:
    import compress

    with tempfile.TemporaryDirectory() as tmp:
        path = compress.save(model, Path(tmp) / "m")
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--targets", nargs="*", default=["60MiB", "70MiB", "80MiB", "95MiB", "110MiB"],
                   help="size budgets without int3 among the candidates")
    p.add_argument("--windows", type=int, default=8, help="held-out windows per domain (default 8)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--budget-sequences", type=int, default=4, help="calibration windows the budget measures errors on")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--int3-targets", nargs="*", default=[],
                   help="size budgets with every candidate, int3 g128 / g64 / g32 included (the default of "
                        "QuantConfig.target_formats; RTN; their errors are measured first, and the other budgets are "
                        "planned from the same measurements)")
    p.add_argument("--int3-gptq-targets", nargs="*", default=[],
                   help="size budgets that may choose int3 too, with GPTQ on the chosen int4 / int3 modules")
    p.add_argument("--gptq-targets", nargs="*", default=["80MiB"],
                   help="targets also run with GPTQ (act-order, clip search) on the int4 modules the budget chooses "
                        "(without int3)")
    p.add_argument("--calibration-fraction", type=float, default=0.5,
                   help="share of the generated text used for calibration (default 0.5: about 25 x 256 tokens)")
    p.add_argument("--skip-peers", action="store_true", help="no NF4 / HQQ rows")
    p.add_argument("--uniform-bits", type=int, nargs="*", default=[4, 3], choices=[3, 4],
                   help="code widths of the uniform int rows (default 4 3: int4 and int3)")
    p.add_argument("--data", default=None, help="calibration text (default: compress.data.DEFAULT_SOURCE, generated)")
    p.add_argument("--out", default=str(RESULTS_DIR / NAME), help="path of the results without suffix (.json, .png)")
    args = p.parse_args(argv)

    import compress
    from compress.data import DEFAULT_SOURCE, TextConfig
    from compress.quantization import QuantConfig
    from compress.quantization.apply import quantize_to_size
    from compress.sizes import parse_size

    t0 = time.perf_counter()
    model, tok = compress.load_model(args.model)
    model.eval()
    cfg = TextConfig(seq_len=args.seq_len, seed=0)
    held = {"shakespeare": compress.load_text("shakespeare", tok, cfg).eval[: args.windows],
            "news": compress.load_text("news", tok, cfg).eval[: args.windows]}
    calib = compress.load_text(args.data or DEFAULT_SOURCE, tok, TextConfig(seq_len=args.seq_len, seed=0,
                                                               calibration_fraction=args.calibration_fraction), model=model)
    print(f"[data] calibration: {args.data or DEFAULT_SOURCE} {tuple(calib.calibration.shape)}; held-out "
          f"{ {k: tuple(v.shape) for k, v in held.items()} } ({time.perf_counter() - t0:.0f} s)", flush=True)
    refs = {d: reference_logprobs(model, ids, args.batch_size) for d, ids in held.items()}
    rows: dict[str, dict[str, Any]] = {}

    def record(label: str, m: nn.Module, kind: str, size: int, how: str, extra: Optional[dict] = None) -> None:
        t = time.perf_counter()
        row = {"kind": kind, "bytes": size, "mib": size / MiB, "how": how, **(extra or {}), "domains": {}}
        for d, ids in held.items():
            row["domains"][d] = evaluate(m, ids, refs[d], args.batch_size)
        row["eval_seconds"] = time.perf_counter() - t
        rows[label] = row
        dom = "  ".join(f"{d} ppl {r['perplexity']:.2f} KL {r['kl']:.4f}" for d, r in row["domains"].items())
        print(f"[row] {label:<34} {size / MiB:7.2f} MiB  {dom}", flush=True)
        json_out(args, rows, t0)

    record("original (bf16 file)", model, "original", saved_bytes(model), "compress.save of the unquantised model")

    # uniform formats: ours, saved and measured
    uniform = [(f"int{b} g{g}", {"bits": b, "group_size": g}) for b in args.uniform_bits for g in (128, 64, 32)]
    for fmt, qfields in uniform + [("ternary", {"method": "ternary"})]:
        for emb in ([None, "int8", "int4"] if fmt != "ternary" else [None, "int4"]):
            m = copy.deepcopy(model)
            qcfg = QuantConfig(**qfields, embeddings=emb, progress=False)
            t = time.perf_counter()
            # with data, as a user's uniform run with a quantised table would: its codes chosen against the head's inputs
            compress.quantize(m, qcfg, data=None if emb is None else calib)
            label = f"{fmt} RTN" + ("" if emb is None else f" + {emb} emb")
            record(label, m, "uniform", saved_bytes(m), f"compress.quantize {qcfg.label()}, embeddings {emb or 'bf16'}",
                   {"quantise_seconds": time.perf_counter() - t})
            del m

    # the size budget: errors measured once (with int3 when any budget may choose it), every target planned from them
    from compress.quantization.config import TARGET_FORMATS

    without_int3 = tuple(f for f in TARGET_FORMATS if not f.startswith("int3"))

    errors = None
    runs = ([(t, False, TARGET_FORMATS) for t in args.int3_targets] + [(t, True, TARGET_FORMATS)
            for t in args.int3_gptq_targets] + [(t, False, without_int3) for t in args.targets]
            + [(t, True, without_int3) for t in args.gptq_targets])
    for target, gptq, formats in runs:
        m = copy.deepcopy(model)
        t = time.perf_counter()
        rep = quantize_to_size(m, QuantConfig(target_size=target, target_sequences=args.budget_sequences, gptq=gptq,
                                              calibration_sequences=len(calib.calibration), target_formats=formats,
                                              progress=False),
                               calib, errors=errors)
        seconds = time.perf_counter() - t
        errors = errors or rep.errors()
        size = saved_bytes(m)
        assert size <= parse_size(target), f"{target}: file of {size} bytes"
        how = "GPTQ" if gptq else "RTN"
        int3 = formats is TARGET_FORMATS
        record(f"budget {target}" + (" int3" if int3 else "") + (" GPTQ" if gptq else ""), m,
               "budget" + ("-int3" if int3 else "") + ("-gptq" if gptq else ""), size,
               f"QuantConfig(target_size={target!r}, gptq={gptq}{', int3 allowed' if int3 else ''}) ({how}, layer-error)",
               {"quantise_seconds": seconds, "target_bytes": rep.target_bytes, "predicted_bytes": rep.predicted_bytes,
                "predicted_kl": rep.predicted_kl, "measured_kl_calibration": rep.measured_kl,
                "format_counts": rep.format_counts(), "kl_scale": rep.kl_scale,
                "guard_kl_calibration": rep.guard_kl, "guard_choice": rep.guard_choice,
                "choices": {c["name"]: c["format"] for c in rep.choices}})
        del m

    if not args.skip_peers:
        targets = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear) and ".layers." in n]
        float_bytes = saved_bytes(model)
        layer_bf16 = sum(model.get_submodule(n).weight.numel() * 2 for n in targets)
        for label, make, how in [
            ("bnb NF4", nf4_linear, "bitsandbytes Linear4bit nf4, blocksize 64 (defaults); rest bf16"),
            ("HQQ 4-bit g64", lambda lin: hqq_linear(lin, 64), "hqq HQQLinear nbits=4 group_size=64; rest bf16"),
        ]:
            m = copy.deepcopy(model)
            try:
                info = replace_with(m, targets, make)
            except Exception as exc:  # a peer library failing here is a result
                rows[label] = {"kind": "peer", "error": f"{type(exc).__name__}: {str(exc)[:200]}", "how": how}
                continue
            record(label, m, "peer", float_bytes - layer_bf16 + info["stored_bytes"], how,
                   {"bits_per_weight": info["bits_per_weight"]})
            del m
    result = json_out(args, rows, t0)
    plot(result, Path(args.out).with_suffix(".png"))
    print(table(result))
    return 0


def json_out(args: argparse.Namespace, rows: dict, t0: float) -> dict:
    result = {
        "benchmark": NAME, "model": args.model, "windows": args.windows, "seq_len": args.seq_len,
        "budget_sequences": args.budget_sequences, "targets": args.targets, "rows": rows,
        "seconds": time.perf_counter() - t0,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": "cpu",
                    "note": "2 CPU cores shared with other jobs (contended)"},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/size_quality.py", *sys.argv[1:]]),
    }
    path = Path(args.out).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = ["shakespeare", "news"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    markers = {"uniform": "o", "peer": "s", "original": "*"}
    curves = [("budget", "-D", "black", "--target-size, without int3"),
              ("budget-gptq", "--D", "tab:red", "--target-size --gptq, without int3"),
              ("budget-int3", "-.D", "tab:blue", "--target-size (default candidates, int3 included)"),
              ("budget-int3-gptq", ":D", "tab:purple", "--target-size --gptq (default candidates)")]
    for ax, d in zip(axes, domains):
        for kind, style, color, label in curves:
            points = sorted((r["mib"], r["domains"][d]["kl"]) for r in result["rows"].values()
                            if r.get("kind") == kind and "domains" in r)
            if points:
                ax.plot(*zip(*points), style, color=color, label=label)
        for label, r in result["rows"].items():
            if r.get("kind", "").startswith("budget") or r.get("kind") == "original" or "domains" not in r:
                continue
            x, y = r["mib"], max(r["domains"][d]["kl"], 1e-5)
            if y > 5:
                continue
            ax.scatter(x, y, marker=markers.get(r["kind"], "o"), s=36)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_yscale("log")
        ax.set_ylim(top=5)  # uniform ternary without training (KL ~13) is off the chart: see the table
        ax.set_xlabel("weights file (MiB; bf16 storage)")
        ax.set_ylabel(f"KL to the original (nats/token), {d} held-out")
        original = result["rows"].get("original (bf16 file)")
        title = f"{result['model']}, {d}: {result['windows']} x {result['seq_len']} tokens"
        if original:
            title += f" (original {original['mib']:.0f} MiB, ppl {original['domains'][d]['perplexity']:.2f})"
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("size on disk vs quality: size budgets (RTN; GPTQ dashed) vs uniform formats (CPU, contended)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(result: dict) -> str:
    lines = ["| row | weights file (MiB) | Shakespeare ppl (KL) | news ppl (x original, KL) |", "| --- | ---: | ---: | ---: |"]
    orig = result["rows"].get("original (bf16 file)", {}).get("domains", {})
    for label, r in sorted(result["rows"].items(), key=lambda kv: -kv[1].get("mib", 0)):
        if "domains" not in r:
            lines.append(f"| {label} | - | failed: {r.get('error')} | |")
            continue
        s, n = r["domains"]["shakespeare"], r["domains"]["news"]
        ratio = n["perplexity"] / orig["news"]["perplexity"] if orig else float("nan")
        lines.append(f"| {label} | {r['mib']:.2f} | {s['perplexity']:.2f} ({s['kl']:.4f}) | "
                     f"{n['perplexity']:.2f} ({ratio:.2f}x, {n['kl']:.4f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
