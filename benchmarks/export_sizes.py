"""Size on disk of SmolLM2-135M in every export format, against its fp16 HF checkpoint.

One run loads SmolLM2-135M (fp32) and makes, in the same process: an fp16 copy;
ternary absmean (per tensor, post-training, no recovery); int4 round-to-nearest
symmetric at group size 128 (576 inputs = 4.5 groups: a partial last group)
and 64 (compressed-tensors needs whole groups).  The quantised copies are cast
to 16-bit, so embeddings (tied with the output head) and norms are 16-bit;
packed scales are float16.  Each is exported in the formats that hold it, and
each row records the bytes of every file written (tokenizer included), the
ratio to the fp16 HF export, bits per weight over all tensors, and bits per
weight of the decoder-layer linears with their scales.  With ``--verify``
every export is also loaded by its outside loader in a fresh process without
compress-lm and its logits compared (``ExportReport.check``).

    python benchmarks/export_sizes.py            # JSON + PNG: benchmarks/results/export_sizes.*
    python benchmarks/export_sizes.py --verify   # plus the outside-loader check of every export
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"

# (model, format, gguf type or None)
ROWS = [
    ("fp16", "hf", None), ("fp16", "gguf", "f16"), ("fp16", "gguf", "q8_0"),
    ("ternary", "native", None), ("ternary", "bitnet", None), ("ternary", "gguf", "tq2_0"), ("ternary", "gguf", "tq1_0"),
    ("int4 g128", "native", None), ("int4 g128", "gptq", None), ("int4 g128", "gguf", "q4_0"),
    ("int4 g64", "compressed-tensors", None), ("int4 g64", "gptq", None), ("int4 g64", "gguf", "q4_0"),
]


def _models(name: str) -> tuple[dict[str, torch.nn.Module], Any]:
    import compress
    from compress.quantization import QuantConfig, quantize

    model, tokenizer = compress.load_model(name)
    models = {"fp16": copy.deepcopy(model).half()}
    for label, cfg in (("ternary", QuantConfig(method="ternary")), ("int4 g128", QuantConfig(method="int4", group_size=128)),
                       ("int4 g64", QuantConfig(method="int4", group_size=64))):
        q = copy.deepcopy(model)
        quantize(q, cfg)
        models[label] = q.half()  # 16-bit embeddings and norms; packed scales stay float16
    return models, tokenizer


def run(name: str, verify: bool, out_dir: Path) -> dict[str, Any]:
    from compress.io.exports import export

    start = time.perf_counter()
    models, tokenizer = _models(name)
    rows = []
    for label, fmt, gguf_type in ROWS:
        options = {"gguf_type": gguf_type} if gguf_type else {}
        t = time.perf_counter()
        report = export(models[label], tokenizer, out_dir / f"{label}-{fmt}-{gguf_type or ''}".replace(" ", "-"), fmt,
                        verify=verify and fmt != "native", dtype="float16", **options)  # the rows' float16
        rows.append({"model": label, "format": fmt if not gguf_type else f"gguf {gguf_type}", "bytes": report.total_bytes,
                     "files": report.sizes, "bits_per_weight": report.bits_per_weight,
                     "layer_bits_per_weight": report.layer_bits_per_weight, "weights": report.parameters,
                     "tensor_types": report.details.get("tensor_types"), "notes": report.notes, "check": report.check,
                     "seconds": round(time.perf_counter() - t, 1)})
        print(f"{label:<10} {rows[-1]['format']:<20} {report.total_bytes / 1e6:8.1f} MB  "
              f"{report.bits_per_weight:5.2f} bits/weight  ({rows[-1]['seconds']} s)", flush=True)
    base = rows[0]["bytes"]
    for row in rows:
        row["ratio_to_fp16_hf"] = row["bytes"] / base
    return {
        "what": "bytes on disk of each export of SmolLM2-135M (all files: weights, config, tokenizer)",
        "model": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"device": f"CPU, {os.cpu_count()} cores", "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    colours = {"fp16": "#888888", "ternary": "#2a9d8f", "int4 g128": "#e76f51", "int4 g64": "#f4a261"}
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.2))
    labels = [f"{r['model']} · {r['format']}" for r in rows]
    ax.barh(labels, [r["bytes"] / 1e6 for r in rows], color=[colours[r["model"]] for r in rows])
    for i, r in enumerate(rows):
        ax.text(r["bytes"] / 1e6 + 2, i, f"{r['bytes'] / 1e6:.0f} MB, {r['bits_per_weight']:.2f} b/w", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MB on disk")
    ax.set_xlim(0, max(r["bytes"] for r in rows) / 1e6 * 1.35)
    ax.set_title(f"{result['model']} exports ({result['machine']['device']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--verify", action="store_true", help="load every export with its outside loader and compare logits")
    parser.add_argument("--out", type=Path, default=RESULTS / "export_sizes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="export-sizes-") as tmp:
        result = run(args.model, args.verify, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
