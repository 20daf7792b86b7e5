"""Checkpoint size on disk against quality: float32 / bfloat16 storage, int8 / int4 embeddings.

One run loads SmolLM2-135M (float32; the original, measured in the same
run) and quantises its decoder-layer linears to int4 round-to-nearest g128
(symmetric, float16 scales, QuantConfig's defaults otherwise: clip search on).  That model is saved with ``compress.save`` as:

    int4 g128, float32 storage            (what compress-lm wrote before 16-bit storage)
    int4 g128, bfloat16 storage           (the default now)
    + int8 embeddings (per row)           (tied embedding / head quantised once)
    + int4 g32 embeddings
    + int4 g64 embeddings

plus the unquantised model stored float32 and bfloat16.  Each checkpoint is
reloaded with ``compress.load`` (floats upcast to float32) and evaluated
on two texts: held-out Shakespeare (the built-in text's eval split, the
calibration domain) and the unseen "news" text (``compress.load_text("news")``).
Per text: perplexity, and the KL divergence from the original's next-token
distribution (mean over tokens, nats).  Sizes are the bytes of the weight
files (``model.safetensors``) and of the whole directory (tokenizer and
manifest included).

The built-in SmolLM2 was dequantised from a Q4_1 GGUF (blocks of 32): its
layer weights already lie on a 4-bit grid; at g128 the grids do not line up.

    python benchmarks/storage_size.py                       # 8 windows x 256 tokens per text
    python benchmarks/storage_size.py --windows 4 --seq-len 128   # quicker
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "storage_size"
MIB = 2**20

# label, quantise the layers, stored dtype, embeddings, embedding group size
ROWS = [
    ("float, float32", False, "float32", None, 32),
    ("float, bfloat16", False, "bfloat16", None, 32),
    ("int4 g128, float32", True, "float32", None, 32),
    ("int4 g128, bfloat16", True, "bfloat16", None, 32),
    ("+ int8 embeddings", True, "bfloat16", "int8", 32),
    ("+ int4 g32 embeddings", True, "bfloat16", "int4", 32),
    ("+ int4 g64 embeddings", True, "bfloat16", "int4", 64),  # 576 wide: 128 does not divide it
]


def _texts(tokenizer: Any, windows: int, seq_len: int) -> dict[str, torch.Tensor]:
    import compress
    from compress.data import TextConfig

    cfg = TextConfig(seq_len=seq_len)
    out = {}
    for label, source in (("shakespeare (held-out)", None), ("news (unseen)", "news")):
        held = compress.load_text(source, tokenizer, cfg).eval
        out[label] = held[:windows]
    return out


@torch.no_grad()
def _measure(reference: torch.nn.Module, models: dict[str, torch.nn.Module], ids: torch.Tensor, batch: int) -> dict:
    """Perplexity of every model and of the reference, KL(reference || model), over all predicted tokens."""
    nll = {k: 0.0 for k in ["original", *models]}
    kl = {k: 0.0 for k in models}
    n = 0
    for start in range(0, len(ids), batch):
        x = ids[start:start + batch]
        target = x[:, 1:]
        ref = torch.log_softmax(reference(input_ids=x).logits[:, :-1].float(), dim=-1)
        nll["original"] += float(-ref.gather(-1, target[..., None]).sum())
        for name, m in models.items():
            lp = torch.log_softmax(m(input_ids=x).logits[:, :-1].float(), dim=-1)
            nll[name] += float(-lp.gather(-1, target[..., None]).sum())
            kl[name] += float((ref.exp() * (ref - lp)).sum())
        n += target.numel()
    return {"tokens": n, "perplexity": {k: math.exp(v / n) for k, v in nll.items()},
            "kl": {k: v / n for k, v in kl.items()}}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import compress
    from compress.quantization import QuantConfig

    start = time.perf_counter()
    original, tokenizer = compress.load_model(args.model)
    original.eval()
    texts = _texts(tokenizer, args.windows, args.seq_len)
    int4 = copy.deepcopy(original)
    layer_cfg = QuantConfig(method="int4", group_size=128, progress=False)
    compress.quantize(int4, layer_cfg)
    layer_label = layer_cfg.label() + (" clip-search" if getattr(layer_cfg, "clip_search", False) else "")
    rows, models = [], {}
    for label, quantised, dtype, embeddings, group in ROWS:
        model = copy.deepcopy(int4 if quantised else original)
        if embeddings:
            from compress.quantization.embedding import quantize_embeddings

            quantize_embeddings(model, embeddings, group)
        path = work / label.replace(" ", "_").replace(",", "").replace("+", "plus")
        compress.save(model, path, tokenizer, dtype=dtype)
        weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        total = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        del model
        models[label] = compress.load(path).model.eval()
        rows.append({"label": label, "layers": layer_label if quantised else "float", "dtype": dtype,
                     "embeddings": None if not embeddings else (embeddings if embeddings == "int8" else f"int4 g{group}"),
                     "weights_bytes": weights, "directory_bytes": total})
        print(f"{label:<26} {weights / MIB:7.1f} MiB weights, {total / MIB:7.1f} MiB directory", flush=True)
    del int4
    quality = {}
    for text, ids in texts.items():
        t = time.perf_counter()
        quality[text] = _measure(original, models, ids, args.batch_size)
        print(f"{text}: {quality[text]['tokens']} tokens in {time.perf_counter() - t:.0f} s", flush=True)
    for row in rows:
        row["quality"] = {text: {"perplexity": q["perplexity"][row["label"]], "kl": q["kl"][row["label"]]}
                          for text, q in quality.items()}
    return {
        "benchmark": NAME,
        "model": args.model,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs: timings not comparable)",
        "torch": torch.__version__,
        "windows": args.windows,
        "seq_len": args.seq_len,
        "original_perplexity": {text: q["perplexity"]["original"] for text, q in quality.items()},
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 1),
        "command": "python benchmarks/storage_size.py " + " ".join(sys.argv[1:]),
    }


def table(result: dict[str, Any]) -> str:
    texts = list(result["original_perplexity"])
    head = "| checkpoint | weights MiB | " + " | ".join(f"{t} ppl | {t} KL" for t in texts) + " |"
    lines = [head, "|" + " --- |" * (2 + 2 * len(texts))]
    lines.append("| original (float32, in memory) | | " + " | ".join(
        f"{result['original_perplexity'][t]:.2f} | 0" for t in texts) + " |")
    for row in result["rows"]:
        cells = " | ".join(f"{row['quality'][t]['perplexity']:.2f} | {row['quality'][t]['kl']:.4f}" for t in texts)
        lines.append(f"| {row['label']} | {row['weights_bytes'] / MIB:.1f} | {cells} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Three bar charts sharing the rows: weights on disk, then KL to the original on each text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = list(result["original_perplexity"])
    labels = [r["label"] for r in result["rows"]]
    y = range(len(labels))
    fig, axes = plt.subplots(1, 1 + len(texts), figsize=(4.2 * (1 + len(texts)), 0.45 * len(labels) + 1.6), sharey=True)
    colours = ["tab:gray" if r["layers"] == "float" else "tab:blue" if not r["embeddings"] else "tab:orange"
               for r in result["rows"]]
    sizes = [r["weights_bytes"] / MIB for r in result["rows"]]
    axes[0].barh(y, sizes, color=colours)
    for i, v in enumerate(sizes):
        axes[0].text(v, i, f" {v:.1f}", va="center", fontsize=8)
    axes[0].set_xlabel("weights on disk (MiB)")
    axes[0].set_yticks(list(y), labels, fontsize=8)
    axes[0].invert_yaxis()
    for ax, text in zip(axes[1:], texts):
        kl = [r["quality"][text]["kl"] for r in result["rows"]]
        ax.barh(y, kl, color=colours)
        for i, v in enumerate(kl):
            ax.text(v, i, f" {v:.4f}", va="center", fontsize=8)
        ax.set_xlabel(f"KL to the original, {text} (nats/token)")
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.25)
    fig.suptitle(f"{result['model']}: checkpoint size and quality ({result['windows']} x {result['seq_len']} tokens per text)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--windows", type=int, default=8, help="held-out windows per text (default 8)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default=str(RESULTS), help="directory for storage_size.json and .png")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="storage_size-") as tmp:
        result = run(args, Path(tmp))
    from compress.io.atomic import write_json

    write_json(out / f"{NAME}.json", result)
    plot(result, out / f"{NAME}.png")
    print(table(result))
    print(f"written: {out / (NAME + '.json')}, {out / (NAME + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
