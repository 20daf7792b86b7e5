"""Structured pruning without training: held-out perplexity at equal parameter counts.

One run, on SmolLM2-135M by default (the eval split of the built-in text; the
dense model is measured in the same run):

    dense
    for each sparsity (default 20% and 40% of non-embedding parameters):
        adapt / taylor       Adapt-Pruner's per-layer allocation (ours)
        uniform / magnitude  the same fraction in every layer, L2 of the coupled weights
        uniform / taylor     the same fraction in every layer, first-order Taylor
        torch-pruning        Torch-Pruning (PyPI torch-pruning) at the same parameter count

All three of ours remove whole GQA kv groups and MLP channels (widths rounded
to 8) and calibrate on the calibration split; the uniform rows are one-shot,
Adapt-Pruner takes sub-steps of ``--step`` (its amplitude A equal to the step,
as in the released scripts) and recalibrates on fresh windows at each.

Torch-Pruning: its dependency graph does not finish on the attention of
transformers 5.x Llama models (q/k/v groups loop forever through rotary and
grouped-query attention; VainF/Torch-Pruning#527), so its row excludes the
attention modules (``ignored_layers``) and prunes MLP channels only, ranked by
``GroupMagnitudeImportance(p=2, group_reduction="mean")`` as in its LLM
example, the same ratio in every layer, the width chosen so the non-embedding
count is as close to the target as it can be without exceeding it.  Every
row's actual parameter count is in the table.

    python benchmarks/prune_quality.py                       # JSON + PNG in benchmarks/results/
    python benchmarks/prune_quality.py --eval-sequences 8 --calib-samples 4   # quicker, noisier
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.machine import cpu_name, process_memory_mib, reset_peak_memory

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "prune_quality"
OURS = (("adapt", "taylor"), ("uniform", "magnitude"), ("uniform", "taylor"))


# --------------------------------------------------------------------------- rows

def _evaluate(model: nn.Module, eval_ids: torch.Tensor, batch_size: int) -> dict[str, Any]:
    from compress.eval import EvalConfig, evaluate

    t0 = time.perf_counter()
    rep = evaluate(model, eval_ids, config=EvalConfig(batch_size=batch_size, max_sequences=None, progress=True))
    return {
        "perplexity": rep.model.perplexity,
        "loss": rep.model.loss,
        "params_total": rep.model.params_total,
        "params_non_embedding": rep.model.params_non_embedding,
        "eval_seconds": round(time.perf_counter() - t0, 1),
    }


def _widths(model: nn.Module) -> dict[str, list[int]]:
    import compress

    d = compress.adapter_for(model).describe()
    return {"mlp_width": d["mlp_width"], "num_heads": d["num_heads"], "num_kv_heads": d["num_kv_heads"]}


def prune_ours(model: nn.Module, sparsity: float, method: str, importance: str, calib: torch.Tensor,
               args: argparse.Namespace) -> dict[str, Any]:
    from compress.pruning import PruneConfig, prune

    adapt = method == "adapt"
    cfg = PruneConfig(
        sparsity=sparsity, method=method, importance=importance, round_to=8,
        step=args.step if adapt else 1.0,  # uniform: one shot, the last sub-step shortened onto the budget
        amplitude=args.step if adapt else 0.0,
        calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len, batch_size=args.calib_batch, seed=0,
    )
    rss_before = process_memory_mib("VmRSS")
    peak_reset = reset_peak_memory()
    t0 = time.perf_counter()
    report = prune(model, cfg, data=calib)
    seconds = time.perf_counter() - t0
    peak = process_memory_mib("VmHWM") if peak_reset else None
    return {
        "prune_seconds": round(seconds, 1),
        "substeps": report.substeps,
        "calibration_tokens": report.calibration_tokens,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
        "config": {"step": cfg.step, "amplitude": cfg.amplitude, "calib_samples": cfg.calib_samples,
                   "calib_seq_len": cfg.calib_seq_len, "round_to": cfg.round_to},
    }


def tp_mlp_width(non_embedding: int, sparsity: float, layers: int, mlp_width: int, channel_params: int) -> int:
    """The common MLP width that removes at least ``sparsity`` of the non-embedding parameters, and no more than needed."""
    need = non_embedding * sparsity
    per_channel = layers * channel_params
    remove = -(-int(need) // per_channel)  # ceil: at or below the target count
    if remove >= mlp_width:
        raise SystemExit(f"Torch-Pruning row: sparsity {sparsity} cannot be reached by MLP channels alone.")
    return mlp_width - remove


def prune_torch_pruning(model: nn.Module, sparsity: float, example: torch.Tensor) -> dict[str, Any]:
    import torch_pruning as tp

    import compress
    from compress.pruning.groups import layer_groups
    from compress.sizes import count_parameters

    a = compress.adapter_for(model)
    g = layer_groups(a.layer(0))
    _, non_emb = count_parameters(model)
    width = tp_mlp_width(non_emb, sparsity, a.num_layers, g.mlp_width, g.mlp_channel_params)
    ratio = 1.0 - (width + 0.5) / g.mlp_width  # TP keeps int(C * (1 - ratio)) = width channels
    ignored: list[nn.Module] = [a.embed, *(m for m in [a.lm_head] if m is not None)]
    ignored += [a.attention_module(i) for i in range(a.num_layers)]
    t0 = time.perf_counter()
    pruner = tp.pruner.BasePruner(
        model, example_inputs=example,
        importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False, pruning_ratio=ratio, ignored_layers=ignored, round_to=None,
        output_transform=lambda out: out.logits,
    )
    with torch.no_grad():
        pruner.step()
    got = a.describe()["mlp_width"]
    if set(got) != {width}:
        raise SystemExit(f"Torch-Pruning left MLP widths {sorted(set(got))}, expected {width} in every layer.")
    model.config.intermediate_size = width
    return {
        "prune_seconds": round(time.perf_counter() - t0, 1),
        "config": {"pruner": "BasePruner", "importance": "GroupMagnitudeImportance(p=2, group_reduction='mean')",
                   "pruning_ratio": ratio, "global_pruning": False, "round_to": None,
                   "ignored": "embeddings, lm_head, every attention module (MLP channels only)"},
    }


# --------------------------------------------------------------------------- run

def machine() -> dict[str, Any]:
    cpu = cpu_name()
    return {"cpu": cpu, "cores_visible": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "python": platform.python_version()}


def versions() -> dict[str, str]:
    import torch_pruning
    import transformers

    import compress

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "torch_pruning": getattr(torch_pruning, "__version__", "?"), "compress": compress.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="built-in name or HF directory (default smollm2-135m)")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.4], help="fractions of non-embedding parameters to remove")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per held-out sequence (default 128)")
    p.add_argument("--eval-sequences", type=int, default=32, help="held-out sequences (default 32)")
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--calib-samples", type=int, default=16, help="calibration windows per sub-step (default 16)")
    p.add_argument("--calib-seq-len", type=int, default=64, help="tokens per calibration window (default 64, Adapt-Pruner's)")
    p.add_argument("--calib-batch", type=int, default=16)
    p.add_argument("--step", type=float, default=0.1, help="Adapt-Pruner sub-step Delta, and its amplitude A (default 0.1)")
    p.add_argument("--max-tokens", type=int, default=None, help="read at most this many tokens of text (default: all)")
    p.add_argument("--skip-torch-pruning", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON and PNG")
    args = p.parse_args(argv)

    import compress
    from compress.data import TextConfig
    from compress.sizes import bytes_in_memory

    started = time.perf_counter()
    base, tokenizer = compress.load_model(args.model)
    base.eval()
    text = compress.load_text(None, tokenizer, TextConfig(seq_len=args.seq_len, max_tokens=args.max_tokens))
    eval_ids = text.eval[: args.eval_sequences]
    calib = text.calibration  # windows of calib_seq_len are cut from these sequences
    print(f"{args.model}: held-out {tuple(eval_ids.shape)}, calibration split {tuple(calib.shape)}", flush=True)

    rows: list[dict[str, Any]] = []
    dense = _evaluate(base, eval_ids, args.eval_batch)
    rows.append({"name": "dense", "method": None, "importance": None, "target_sparsity": 0.0, **dense,
                 "achieved_sparsity": 0.0})
    print(f"dense: perplexity {dense['perplexity']:.2f}", flush=True)
    weights_mib = bytes_in_memory(base) / 2**20

    for sparsity in args.sparsities:
        plans: list[tuple[str, Any]] = [(f"{m}/{i}", (m, i)) for m, i in OURS]
        if not args.skip_torch_pruning:
            plans.append(("torch-pruning/magnitude (MLP only)", None))
        for name, plan in plans:
            model = copy.deepcopy(base)
            if plan is None:
                extra = prune_torch_pruning(model, sparsity, calib[:1, : args.calib_seq_len])
                method, importance = "torch-pruning", "magnitude"
            else:
                method, importance = plan
                extra = prune_ours(model, sparsity, method, importance, calib, args)
            ev = _evaluate(model, eval_ids, args.eval_batch)
            row = {"name": name, "method": method, "importance": importance, "target_sparsity": sparsity, **ev,
                   "achieved_sparsity": 1 - ev["params_non_embedding"] / dense["params_non_embedding"],
                   "widths": _widths(model), **extra}
            rows.append(row)
            print(f"{sparsity:.0%} {name}: perplexity {ev['perplexity']:.2f}, non-embedding params "
                  f"{ev['params_non_embedding']:,} ({row['achieved_sparsity']:.2%} removed)", flush=True)
            del model
            gc.collect()

    adapt_wins = {}
    for sparsity in args.sparsities:
        ppl = {r["name"]: r["perplexity"] for r in rows if r["target_sparsity"] == sparsity}
        adapt_wins[str(sparsity)] = all(ppl["adapt/taylor"] < ppl[n] for n in ("uniform/magnitude", "uniform/taylor"))
    calib_rows = [r for r in rows if r.get("peak_rss_mib") is not None and r["importance"] == "taylor"]
    result = {
        "benchmark": NAME,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "model": args.model,
        "sizes": {"eval_sequences": int(eval_ids.shape[0]), "eval_seq_len": int(eval_ids.shape[1]),
                  "calib_samples_per_substep": args.calib_samples, "calib_seq_len": args.calib_seq_len,
                  "calibration_split_sequences": int(calib.shape[0]), "adapt_step": args.step,
                  "sparsities": args.sparsities},
        "text": text.describe(),
        "rows": rows,
        "adapt_beats_both_uniform": adapt_wins,
        "memory": {
            "model_weights_mib": round(weights_mib, 1),
            "taylor_calibration_peak_over_rss_mib": max(
                (r["peak_rss_mib"] - r["rss_before_mib"] for r in calib_rows), default=None),
            "note": "peak RSS (VmHWM, reset before each prune) minus the RSS before it, over the Taylor rows; "
                    "the RSS before includes the dense model and the copy being pruned",
        },
        "notes": [
            "No training after pruning; perplexity of next-token prediction on the held-out split.",
            "Torch-Pruning prunes MLP channels only: its dependency graph does not terminate on transformers 5.x "
            "grouped-query attention (VainF/Torch-Pruning#527), so the attention modules are in ignored_layers.",
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{NAME}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    png_path = plot(result, args.out / f"{NAME}.png")
    print(table(result))
    print(f"wrote {json_path} and {png_path} in {result['seconds']:.0f} s")
    return 0


def table(result: dict[str, Any]) -> str:
    lines = ["| removed (target) | method | non-embedding params | removed (actual) | held-out perplexity |",
             "| --- | --- | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['target_sparsity']:.0%} | {r['name']} | {r['params_non_embedding']:,} | "
                     f"{r['achieved_sparsity']:.2%} | {r['perplexity']:.1f} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    dense = next(r for r in rows if r["name"] == "dense")
    sparsities = result["sizes"]["sparsities"]
    names = list(dict.fromkeys(r["name"] for r in rows if r["name"] != "dense"))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        xs, ys, labels = [], [], []
        for i, s in enumerate(sparsities):
            r = next((r for r in rows if r["name"] == name and r["target_sparsity"] == s), None)
            if r is not None:
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(r["perplexity"])
                labels.append(f"{r['params_non_embedding'] / 1e6:.1f}M")
        bars = ax.bar(xs, ys, width, label=name)
        for b, lab in zip(bars, labels):
            ax.annotate(lab, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
    ax.axhline(dense["perplexity"], color="black", linestyle="--", linewidth=1,
               label=f"dense ({dense['params_non_embedding'] / 1e6:.1f}M): {dense['perplexity']:.1f}")
    ax.set_xticks(range(len(sparsities)), [f"{s:.0%} of non-embedding params removed" for s in sparsities])
    ax.set_yscale("log")
    ax.set_ylabel("held-out perplexity (log scale)")
    sz = result["sizes"]
    ax.set_title(f"{result['model']}, no training: {sz['eval_sequences']}x{sz['eval_seq_len']} held-out tokens "
                 "(labels: non-embedding params)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
