"""Kernel microbenchmark: packed int4 / int3 / ternary matmuls against torch fp16/bf16 (cuBLAS).

    python benchmarks/kernel_matmul.py                      # every shape, batch 1 / 16 / 2048
    python benchmarks/kernel_matmul.py --shapes 4096x4096 --batches 1 16 --quick

Needs a CUDA GPU.  For every (shape N x K, batch M, method) it reports the
kernel time, the achieved bandwidth (GB/s, logical bytes: packed weight +
scales + x + y) and the speedup over torch fp16.  Weight and input buffers
rotate across more than twice the L2 size so that small matrices are not
served from cache, and calls are timed inside a CUDA graph (launch overhead
excluded; end-to-end decode speed is a separate benchmark).  Writes
``benchmarks/results/kernels-<gpu>.json`` and a PNG beside it.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# label -> (N, K): N = out_features, K = in_features (nn.Linear weight [N, K])
SHAPES = {
    "4096x4096": (4096, 4096),
    "8192x8192": (8192, 8192),
    "smollm2-qo-576x576": (576, 576),
    "smollm2-up-1536x576": (1536, 576),
    "smollm2-down-576x1536": (576, 1536),
    "smollm2-lmhead-49152x576": (49152, 576),
    "1b-qo-2048x2048": (2048, 2048),
    "1b-up-8192x2048": (8192, 2048),
    "1b-down-2048x8192": (2048, 8192),
}
BATCHES = (1, 16, 2048)
GROUP_SIZE = 128
BASELINE = "torch_fp16"


@dataclass
class Method:
    """One way to compute y = x @ W.T: how to build its buffers, call it, and count its bytes."""

    name: str
    build: Callable[[int, int, int], dict]  # (N, K, seed) -> weight tensors
    call: Callable[[torch.Tensor, dict], torch.Tensor]
    weight_bytes: Callable[[int, int], float]  # (N, K) -> bytes of weight + scales
    x_dtype: torch.dtype = torch.float16


# --------------------------------------------------------------------------- methods

def _dense(dtype):
    def build(N, K, seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        return {"w": (torch.randn(N, K, device="cuda", generator=g) * 0.02).to(dtype)}
    return build


def _int4_build(N, K, seed):
    from compress.kernels import pack_int4

    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randint(0, 16, (N, K), device="cuda", generator=g)
    scales = (torch.rand(K // GROUP_SIZE, N, device="cuda", generator=g) * 0.01 + 0.001).half()
    zeros = torch.randint(0, 16, (K // GROUP_SIZE, N), device="cuda", generator=g).half()
    return {"qweight": pack_int4(q), "scales": scales, "zeros": zeros}


def _int3_build(N, K, seed):
    from compress.kernels import pack_int3

    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randint(0, 8, (N, K), device="cuda", generator=g)
    scales = (torch.rand(K // GROUP_SIZE, N, device="cuda", generator=g) * 0.02 + 0.002).half()
    zeros = torch.randint(0, 8, (K // GROUP_SIZE, N), device="cuda", generator=g).half()
    return {"qweight": pack_int3(q), "scales": scales, "zeros": zeros, "fmt": "int3"}


def _ternary_build(N, K, seed):
    from compress.kernels import pack_ternary

    g = torch.Generator(device="cuda").manual_seed(seed)
    c = torch.randint(0, 3, (N, K), device="cuda", generator=g)
    return {"qweight": pack_ternary(c), "scale": (torch.rand(N, device="cuda", generator=g) * 0.02).half()}


def _int4_call(x, b):
    from compress.kernels import quant_matmul

    return quant_matmul(x, b["qweight"], b["scales"], b["zeros"], fmt="int4", group_size=GROUP_SIZE)


def _int3_call(x, b):
    from compress.kernels import quant_matmul

    return quant_matmul(x, b["qweight"], b["scales"], b["zeros"], fmt="int3", group_size=GROUP_SIZE)


def _int4_dequant_call(x, b):
    # The baseline a fused kernel must beat: dequantise to fp16, then cuBLAS.
    from compress.kernels import dequantize_int4

    w = dequantize_int4(b["qweight"], b["scales"], b["zeros"], GROUP_SIZE, dtype=x.dtype)
    return torch.nn.functional.linear(x, w)


def _ternary_call(fmt):
    def call(x, b):
        from compress.kernels import quant_matmul

        return quant_matmul(x, b["qweight"], b["scale"], fmt=fmt)
    return call


def _bnb_nf4_build(N, K, seed):
    import bitsandbytes.functional as F  # optional peer; skipped when missing

    w = _dense(torch.float16)(N, K, seed)["w"]
    packed, state = F.quantize_4bit(w, quant_type="nf4", blocksize=64)
    return {"packed": packed, "state": state}


def _bnb_nf4_call(x, b):
    import bitsandbytes as bnb

    return bnb.matmul_4bit(x, b["packed"].t(), quant_state=b["state"])


def _tinygemm_build(N, K, seed):
    # torch's own int4 kernel (tinygemm, what torchao's int4 weight-only uses); bf16 only.
    b = _int4_build(N, K, seed)
    from compress.kernels import unpack_int4

    q = unpack_int4(b["qweight"]).to(torch.int32)  # [N, K]
    q_uint8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    packed = torch._convert_weight_to_int4pack(q_uint8, 8)
    s = b["scales"].to(torch.bfloat16)
    # tinygemm dequantises (q - 8) * s + zero_point: express our (q - z) * s in that form.
    zp = ((8 - b["zeros"].float()) * b["scales"].float()).to(torch.bfloat16)
    return {"packed": packed, "sz": torch.stack([s, zp], dim=-1).contiguous()}


def _tinygemm_call(x, b):
    return torch._weight_int4pack_mm(x, b["packed"], GROUP_SIZE, b["sz"])


def _int4_bytes(N, K):
    return N * K / 2 + 2 * 2 * (K / GROUP_SIZE) * N  # codes + fp16 scales and zeros


def _int3_bytes(N, K):
    return N * K * 3 / 8 + 2 * 2 * (K / GROUP_SIZE) * N  # codes (bit planes) + fp16 scales and zeros


def _ternary_bytes(N, K):
    return N * K / 4 + 2 * N


METHODS = {
    "torch_fp16": Method("torch_fp16", _dense(torch.float16), lambda x, b: torch.nn.functional.linear(x, b["w"]), lambda N, K: 2 * N * K),
    "torch_bf16": Method("torch_bf16", _dense(torch.bfloat16), lambda x, b: torch.nn.functional.linear(x, b["w"]), lambda N, K: 2 * N * K, torch.bfloat16),
    "int4_g128": Method("int4_g128", _int4_build, _int4_call, _int4_bytes),
    "int3_g128": Method("int3_g128", _int3_build, _int3_call, _int3_bytes),
    "int4_g128_dequant_cublas": Method("int4_g128_dequant_cublas", _int4_build, _int4_dequant_call, _int4_bytes),
    "ternary": Method("ternary", _ternary_build, _ternary_call("ternary"), _ternary_bytes),
    "ternary_a8": Method("ternary_a8", _ternary_build, _ternary_call("ternary_a8"), _ternary_bytes),
    "bnb_nf4": Method("bnb_nf4", _bnb_nf4_build, _bnb_nf4_call, lambda N, K: N * K / 2 + 4 * N * K / 64),
    "torch_tinygemm_int4_g128": Method("torch_tinygemm_int4_g128", _tinygemm_build, _tinygemm_call, _int4_bytes, torch.bfloat16),
}


# --------------------------------------------------------------------------- timing

def _l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)


def _time_calls(fn: Callable[[int], torch.Tensor], n_calls: int, replays: int) -> tuple[float, str]:
    """Median seconds per call of ``fn(i)`` for i in range(n_calls), captured in a CUDA graph.

    Falls back to plain CUDA-event timing (launch overhead included) if capture fails.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as graph capture requires
        for i in range(min(n_calls, 3)):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(n_calls):
                fn(i)
        run, mode = graph.replay, "cuda-graph"
    except Exception:  # noqa: BLE001 - any capture failure: time eagerly instead
        torch.cuda.synchronize()

        def run():
            for i in range(n_calls):
                fn(i)
        mode = "events"
    run()
    times = []
    for _ in range(replays):
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / n_calls)
    return statistics.median(times), mode


def bench_one(method: Method, N: int, K: int, M: int, replays: int, check: bool) -> dict:
    """Time one (method, shape, batch) with rotating buffers; returns one result row."""
    weight_b = method.weight_bytes(N, K)
    x_b, y_b = 2 * M * K, 2 * M * N
    # Enough copies of weights and inputs that one pass over them exceeds 2x L2.
    n_buf = max(1, min(512, math.ceil(2 * _l2_bytes() / (weight_b + x_b))))
    weights = [method.build(N, K, seed) for seed in range(n_buf)]
    xs = [torch.randn(M, K, device="cuda", dtype=method.x_dtype) for _ in range(n_buf)]
    # Each captured call keeps its output alive in the graph pool: cap that at ~2 GB.
    n_calls = max(n_buf, min(64, int(2 * 2**30 // max(y_b, 1))))
    row = {"method": method.name, "N": N, "K": K, "M": M, "buffers": n_buf, "bytes": weight_b + x_b + y_b}
    if check:
        row["max_rel_err"] = _check(method, weights[0], xs[0])
    seconds, mode = _time_calls(lambda i: method.call(xs[i % n_buf], weights[i % n_buf]), n_calls, replays)
    row.update(us=seconds * 1e6, gbps=row["bytes"] / seconds / 1e9, timing=mode)
    return row


def _check(method: Method, weights: dict, x: torch.Tensor) -> Optional[float]:
    """Max error relative to max |y| against the PyTorch reference (quantised methods only)."""
    from compress.kernels import reference

    if "qweight" not in weights:
        return None
    y = method.call(x, weights).float()
    if weights.get("fmt") == "int3":
        from compress.kernels.formats import Int3Format

        ref = Int3Format.reference(x.float(), weights["qweight"], weights["scales"], weights["zeros"], GROUP_SIZE)
    elif "scales" in weights:
        ref = reference.int4_matmul(x.float(), weights["qweight"], weights["scales"], weights["zeros"], GROUP_SIZE)
    elif method.name == "ternary_a8":
        ref = reference.ternary_matmul_a8(x.float(), weights["qweight"], weights["scale"])
    else:
        ref = reference.ternary_matmul(x.float(), weights["qweight"], weights["scale"])
    return float((y - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


# --------------------------------------------------------------------------- report

def _plot(rows: list[dict], device: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["M"] for r in rows})
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))  # GB/s for all, speedup for all but the baseline
    fig, axes = plt.subplots(2, len(batches), figsize=(6 * len(batches), 9), squeeze=False)
    width = 0.8 / max(1, len(methods))
    for col, M in enumerate(batches):
        for j, m in enumerate(methods):
            by_shape = {r["shape"]: r for r in rows if r["M"] == M and r["method"] == m and "us" in r}
            xs = [i + j * width for i, s in enumerate(shapes) if s in by_shape]
            if m != BASELINE:
                axes[0][col].bar(xs, [by_shape[s].get("speedup", 0) for s in shapes if s in by_shape], width, label=m, color=f"C{j}")
            axes[1][col].bar(xs, [by_shape[s]["gbps"] for s in shapes if s in by_shape], width, label=m, color=f"C{j}")
        axes[0][col].axhline(1.0, color="k", lw=0.8)
        axes[0][col].set_title(f"batch {M}: speedup over {BASELINE}")
        axes[1][col].set_title(f"batch {M}: achieved GB/s")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))])
            ax.set_xticklabels(shapes, rotation=45, ha="right", fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.suptitle(f"packed matmul kernels on {device} (cold L2, CUDA graphs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _slug(name: str) -> str:
    from compress.kernels.tuning import device_slug

    return device_slug(name)


def _parse_shape(text: str) -> tuple[str, tuple[int, int]]:
    if text in SHAPES:
        return text, SHAPES[text]
    try:
        n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"unknown shape {text!r}: use NxK (e.g. 4096x4096) or one of {', '.join(SHAPES)}") from None
    return text, (n, k)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/kernel_matmul.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), help="labels or NxK (out x in)")
    ap.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--replays", type=int, default=10, help="timed graph replays per case (median)")
    ap.add_argument("--quick", action="store_true", help="3 replays per case")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check against the reference")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernel_matmul.py needs a CUDA GPU and none is visible here; run it on a GPU machine.", file=sys.stderr)
        return 2

    import triton

    shapes = [_parse_shape(s) for s in args.shapes]
    methods = [METHODS[m] for m in dict.fromkeys([BASELINE, *args.methods])]
    device = torch.cuda.get_device_name()
    replays = 3 if args.quick else args.replays
    rows: list[dict] = []
    started = time.time()
    for label, (N, K) in shapes:
        for M in args.batches:
            for method in methods:
                try:
                    row = bench_one(method, N, K, M, replays, check=not args.no_check)
                except ImportError as exc:
                    row = {"method": method.name, "N": N, "K": K, "M": M, "skipped": f"not installed: {exc}"}
                except Exception as exc:  # noqa: BLE001 - record and go on with the other cases
                    row = {"method": method.name, "N": N, "K": K, "M": M, "skipped": f"{type(exc).__name__}: {exc}"[:300]}
                row["shape"] = label
                rows.append(row)
                torch.cuda.empty_cache()
                shown = f"{row['us']:9.1f} us {row['gbps']:7.0f} GB/s" if "us" in row else row["skipped"][:60]
                print(f"{label:26s} M={M:<5d} {method.name:26s} {shown}", flush=True)
    for row in rows:  # speedup over fp16 in the same run
        base = next((r for r in rows if r["shape"] == row["shape"] and r["M"] == row["M"] and r["method"] == BASELINE and "us" in r), None)
        if base and "us" in row:
            row["speedup"] = base["us"] / row["us"]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"kernels-{_slug(device)}"
    report = {
        "device": device,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "l2_bytes": _l2_bytes(),
        "group_size": GROUP_SIZE,
        "bytes_counted": "packed weight + scales (+ zeros) + x + y, each read or written once",
        "seconds": round(time.time() - started, 1),
        "rows": rows,
    }
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    if not args.no_plot:
        _plot(rows, device, stem.with_suffix(".png"))
    print(f"wrote {stem}.json" + ("" if args.no_plot else f" and {stem}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
