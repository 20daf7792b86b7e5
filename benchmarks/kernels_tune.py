"""Tune the Triton kernels' launch configs on this GPU and save the winners.

    python benchmarks/kernels_tune.py                       # the benchmark shapes, M = 1..2048
    python benchmarks/kernels_tune.py --shapes 4096x4096 --batches 1 16 --quick

For every (kernel, batch bucket, N, K, G) it times each candidate of
``compress.kernels.tuning.candidates`` with ``triton.testing.do_bench`` (L2
flushed between calls), keeps the fastest one whose output matches the
reference, and merges it into ``compress/kernels/configs/<gpu-name>.json``, which
``tuning.get_config`` reads on first use.  Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 512, 2048)


def _bench_module():
    # benchmarks/ is not a package; load the sibling by path under a unique name.
    spec = importlib.util.spec_from_file_location("compress_bench_kernels", Path(__file__).with_name("kernel_matmul.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _inputs(fmt: str, M: int, N: int, K: int, G: int, device: str):
    from compress.kernels import pack_int4, pack_ternary

    x = torch.randn(M, K, device=device, dtype=torch.float16)
    if fmt == "int4":
        q = torch.randint(0, 16, (N, K), device=device)
        scales = (torch.rand(K // G, N, device=device) * 0.01 + 0.001).half()
        zeros = torch.randint(0, 16, (K // G, N), device=device).half()
        return x, (pack_int4(q), scales, zeros, G)
    c = torch.randint(0, 3, (N, K), device=device)
    return x, (pack_ternary(c), (torch.rand(N, device=device) * 0.02).half())


def tune_one(
    kernel: str, M: int, N: int, K: int, G: int, rep_ms: int = 25, max_candidates: Optional[int] = None,
    device: str = "cuda",
) -> Optional[dict]:
    """Time every candidate for one case; return the winner's config dict plus timings (None if none ran)."""
    import triton.testing

    from compress.kernels import reference, triton_int4, triton_ternary, tuning

    fmt = tuning.KERNELS[kernel][0]
    module = triton_int4 if fmt == "int4" else triton_ternary
    fn = getattr(module, kernel)
    x, weight = _inputs("int4" if fmt == "int4" else "ternary", M, N, K, G, device)
    ref_fn = {"int4": reference.int4_matmul, "ternary": reference.ternary_matmul, "ternary_a8": reference.ternary_matmul_a8}[fmt]
    ref = ref_fn(x.float(), *weight).float()
    tol = 1e-2 * ref.abs().max().item() + 1e-3

    def time_config(cfg) -> Optional[float]:
        try:
            y = fn(x, *weight, config=cfg).float()
            if not torch.allclose(y, ref, rtol=1e-2, atol=tol):
                return None  # wrong result: never pick it
            return triton.testing.do_bench(lambda: fn(x, *weight, config=cfg), warmup=5, rep=rep_ms)
        except Exception:  # noqa: BLE001 - out of resources, compile failure: skip this candidate
            return None

    default = tuning.fit_config(tuning.default_config(kernel, M, N, K, G), kernel, M, N, K, G)
    default_ms = time_config(default)
    best, best_ms = default, default_ms if default_ms is not None else float("inf")
    cands = tuning.candidates(kernel, M, N, K, G)
    if max_candidates and len(cands) > max_candidates:  # spread the sample over the whole space
        cands = [cands[i * len(cands) // max_candidates] for i in range(max_candidates)]
    for cfg in cands:
        ms = time_config(cfg)
        if ms is not None and ms < best_ms:
            best, best_ms = cfg, ms
    if best_ms == float("inf"):
        return None
    return {**best.to_dict(), "us": round(best_ms * 1e3, 2),
            "default_us": None if default_ms is None else round(default_ms * 1e3, 2), "tried": len(cands)}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/kernels_tune.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=None, help="labels from benchmarks/kernel_matmul.py or NxK")
    ap.add_argument("--batches", nargs="+", type=int, default=list(DEFAULT_BATCHES))
    ap.add_argument("--formats", nargs="+", default=["int4", "ternary", "ternary_a8"], choices=["int4", "ternary", "ternary_a8"])
    ap.add_argument("--group-sizes", nargs="+", type=int, default=[128], help="int4 group sizes to tune")
    ap.add_argument("--rep-ms", type=int, default=25, help="do_bench measuring time per candidate")
    ap.add_argument("--quick", action="store_true", help="at most 24 candidates per case, 10 ms each")
    ap.add_argument("--out", type=Path, default=None, help="JSON to merge into (default compress/kernels/configs/<gpu>.json)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels_tune.py needs a CUDA GPU and none is visible here; run it on the GPU you tune for.", file=sys.stderr)
        return 2

    import triton

    from compress.kernels import tuning

    bench = _bench_module()
    shapes = [bench._parse_shape(s) for s in (args.shapes or list(bench.SHAPES))]
    device = torch.cuda.get_device_name()
    out = args.out or tuning.CONFIG_DIR / f"{tuning.device_slug(device)}.json"
    data = json.loads(out.read_text()) if out.is_file() else {}
    table = data.get("configs", {})
    started = time.time()
    for label, (N, K) in shapes:
        for fmt in args.formats:
            for G in (args.group_sizes if fmt == "int4" else [0]):
                if G and K % G:
                    continue
                for M in args.batches:
                    kernel = tuning.kernel_for(fmt, M)
                    key = tuning.config_key(kernel, M, N, K, G)
                    result = tune_one(kernel, M, N, K, G, rep_ms=10 if args.quick else args.rep_ms,
                                      max_candidates=24 if args.quick else None)
                    if result is None:
                        print(f"{key:45s} no candidate compiled and matched the reference; keeping the default", flush=True)
                        continue
                    table[key] = result
                    print(f"{key:45s} {result['us']:9.1f} us (default {result['default_us']} us) "
                          f"bn={result['block_n']} bk={result['block_k']} split={result['split_k']} "
                          f"warps={result['num_warps']} stages={result['num_stages']}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    data.update(device=device, torch=torch.__version__, triton=triton.__version__, configs=dict(sorted(table.items())))
    out.write_text(json.dumps(data, indent=1))
    print(f"wrote {len(table)} configs to {out} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
