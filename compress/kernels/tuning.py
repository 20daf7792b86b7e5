"""Launch configurations: candidates per kernel, defaults, and tuned winners per GPU.

We select configs by hand instead of ``@triton.autotune``: the decorator
fails under ``TRITON_INTERPRET=1`` with more than one config (and at import
on triton <= 3.2), and tuning on every process start would be slow.  Instead
``benchmarks/kernels_tune.py`` times :func:`candidates` on a GPU and writes
the winners to ``configs/<gpu-name>.json``; :func:`get_config` reads that
file on first use (never at import) and falls back to a heuristic default.
Under the interpreter every kernel gets one fixed small config.

Config keys are ``"<kernel>|M<bucket>|N<N>|K<K>|G<G>"`` (G = 0 for ternary).
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from .formats import LINEAR_FORMATS, get_format

__all__ = [
    "KERNELS",
    "SPLITK_MAX_M",
    "kernel_for",
    "KernelConfig",
    "CONFIG_DIR",
    "is_interpreter",
    "m_bucket",
    "config_key",
    "device_slug",
    "default_config",
    "interpreter_config",
    "candidates",
    "fit_config",
    "load_tuned",
    "get_config",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# kernel name -> (format, family); family decides which launch parameters matter
KERNELS = {kernel: (fmt, family) for fmt in LINEAR_FORMATS for family, kernel in get_format(fmt).kernels.items()}


# Largest batch served by the split-K kernels; M == 1 goes to the GEMV, larger M to the GEMM.
SPLITK_MAX_M = 64


def kernel_for(fmt: str, M: int) -> str:
    """Kernel name for a format ("int4", "ternary", "ternary_a8") at batch size M."""
    kernels = get_format(fmt, "linear").kernels
    if len(kernels) == 1:  # one kernel serves every batch size
        return next(iter(kernels.values()))
    return kernels["gemv" if M <= 1 else "splitk" if M <= SPLITK_MAX_M else "gemm"]


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch parameters of one kernel launch.

    ``split_k`` is the number of programs along K (partial sums are combined
    with fp32 atomics when it is > 1); GEMV ignores ``block_m`` and ``group_m``.
    """

    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "KernelConfig":
        return cls(**{k: int(d[k]) for k in asdict(cls()) if k in d})


def is_interpreter() -> bool:
    """True when Triton runs on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def m_bucket(M: int) -> int:
    """Batch bucket a tuned config is stored under: 1, then powers of two up to 4096."""
    return min(_next_pow2(max(1, M)), 4096)


def config_key(kernel: str, M: int, N: int, K: int, G: int = 0) -> str:
    return f"{kernel}|M{m_bucket(M)}|N{N}|K{K}|G{G}"


def device_slug(name: str) -> str:
    """File name stem for a GPU name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------- defaults

def interpreter_config(kernel: str, M: int = 1) -> KernelConfig:
    """The single fixed config used under ``TRITON_INTERPRET=1`` (small tiles, split-K on)."""
    family = KERNELS[kernel][1]
    if family == "gemv":
        return KernelConfig(block_m=1, block_n=32, block_k=32, split_k=2, num_warps=1, num_stages=1)
    if family == "gemm" or (family == "a8" and M > 64):
        return KernelConfig(block_m=32, block_n=32, block_k=32, split_k=1, group_m=2)
    return KernelConfig(block_m=16, block_n=32, block_k=32, split_k=2)


def default_config(kernel: str, M: int, N: int, K: int, G: int = 0) -> KernelConfig:
    """Heuristic config for a GPU when nothing is tuned (KERNELS.md section 8)."""
    family = KERNELS[kernel][1]
    if family == "gemv":
        # ~2-4 waves on 132 SMs: split K until N-blocks x K-splits reaches ~256 programs.
        bn, bk = 128, 128
        split = max(1, min(_cdiv(K, bk), _cdiv(256, _cdiv(N, bn))))
        return KernelConfig(block_m=1, block_n=bn, block_k=bk, split_k=split, num_warps=4, num_stages=1)
    if family == "gemm" or (family == "a8" and M > 64):
        return KernelConfig(block_m=128, block_n=128, block_k=64, split_k=1, group_m=8, num_warps=8, num_stages=3)
    # small batch: BLOCK_M 16, split K to fill the GPU
    bn = 64
    split = max(1, min(16, _cdiv(K, 128), _cdiv(264, _cdiv(N, bn) * _cdiv(M, 16))))
    return KernelConfig(block_m=16, block_n=bn, block_k=64, split_k=split, num_warps=4, num_stages=3)


def fit_config(cfg: KernelConfig, kernel: str, M: int, N: int, K: int, G: int = 0) -> KernelConfig:
    """Adjust ``cfg`` so it is valid for this shape.

    A K-block must not straddle two scale groups (scales are applied per
    block after the partial dot), so ``block_k <= G`` unless the whole row is
    one group; packing needs block_k a multiple of the codes per word; tl.dot
    needs every tile dimension >= 16 (32 along K for int8).
    """
    fmt, family = KERNELS[kernel]
    spec = get_format(fmt)
    bk = max(cfg.block_k, spec.per_word)
    if family != "gemv":
        bk = max(bk, spec.min_dot_k)
    if spec.grouped and G and G < K:
        bk = min(bk, G)
    bm = 1 if family == "gemv" else max(16, cfg.block_m)
    bn = max(16, cfg.block_n)
    iters = _cdiv(K, max(1, cfg.split_k) * bk)
    split = _cdiv(K, iters * bk)  # drop programs that would get no K at all
    return replace(cfg, block_m=bm, block_n=bn, block_k=bk, split_k=split)


def candidates(kernel: str, M: int, N: int, K: int, G: int = 0) -> list[KernelConfig]:
    """Search space for tuning (KERNELS.md section 8), pruned to valid, distinct configs."""
    family = KERNELS[kernel][1]
    out: list[KernelConfig] = []
    if family == "gemv":
        for bn, bk, warps, per_prog in itertools.product((64, 128, 256, 512), (32, 64, 128, 256), (1, 2, 4), (1, 2, 4)):
            split = max(1, _cdiv(K, bk * per_prog))
            out.append(KernelConfig(1, bn, bk, split, 1, warps, 1))
    elif family == "gemm" or (family == "a8" and M > 64):
        for bm, bn, bk, stages, warps in itertools.product((64, 128), (64, 128, 256), (32, 64, 128), (3, 4), (4, 8)):
            out.append(KernelConfig(bm, bn, bk, 1, 8, warps, stages))
    else:
        bms = sorted({16, min(64, max(16, _next_pow2(M)))})
        for bm, bn, bk, split, stages in itertools.product(bms, (32, 64, 128), (32, 64, 128), (1, 2, 4, 8, 16), (2, 3)):
            out.append(KernelConfig(bm, bn, bk, split, 1, 4, stages))
    seen, unique = set(), []
    for c in out:
        c = fit_config(c, kernel, M, N, K, G)
        if c not in seen and _fits(c, family, get_format(KERNELS[kernel][0]).word_tiles):
            seen.add(c)
            unique.append(c)
    return unique


# Budgets that keep candidates compilable on an H100 without spilling; compiling
# hopeless configs would dominate tuning time.
_MAX_TILE_PER_THREAD = 128  # fp32 tile elements per thread in the GEMV
_MAX_SHARED_BYTES = 200 * 1024  # of the 227 KiB an H100 block may use


def _fits(cfg: KernelConfig, family: str, word_tiles: int = 1) -> bool:
    if family == "gemv":
        return cfg.block_n * cfg.block_k <= _MAX_TILE_PER_THREAD * 32 * cfg.num_warps
    # Each pipeline stage holds an x tile (<= 2 B/elem) and the packed-word tile, which is
    # loaded as [BLOCK_K, BLOCK_N] int32 (rows repeat the same word, GemLite-style); int3 loads three (bit planes).
    stage = cfg.block_m * cfg.block_k * 2 + cfg.block_k * cfg.block_n * 4 * word_tiles
    return max(1, cfg.num_stages - 1) * stage <= _MAX_SHARED_BYTES


# --------------------------------------------------------------------------- tuned winners

@functools.lru_cache(maxsize=None)
def load_tuned(device_name: str, config_dir: Optional[str] = None) -> dict[str, KernelConfig]:
    """Read ``<config_dir>/<device-slug>.json`` ({"configs": {key: config}}); empty if absent."""
    path = Path(config_dir or CONFIG_DIR) / f"{device_slug(device_name)}.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {key: KernelConfig.from_dict(cfg) for key, cfg in data.get("configs", {}).items()}


@functools.lru_cache(maxsize=None)
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _lookup(table: dict[str, KernelConfig], kernel: str, M: int, N: int, K: int, G: int) -> Optional[KernelConfig]:
    hit = table.get(config_key(kernel, M, N, K, G))
    if hit is not None:
        return hit
    # Same shape tuned at another batch bucket: take the nearest bucket.
    prefix, suffix = f"{kernel}|M", f"|N{N}|K{K}|G{G}"
    near = [(abs(int(k[len(prefix):-len(suffix)]).bit_length() - m_bucket(M).bit_length()), k)
            for k in table if k.startswith(prefix) and k.endswith(suffix)]
    return table[min(near)[1]] if near else None


def get_config(kernel: str, M: int, N: int, K: int, G: int = 0, device: Optional[torch.device] = None) -> KernelConfig:
    """The config to launch ``kernel`` with: interpreter > tuned JSON > heuristic, fitted to the shape."""
    if is_interpreter() or device is None or device.type != "cuda":
        cfg = interpreter_config(kernel, M)
    else:
        table = load_tuned(_device_name(device.index if device.index is not None else torch.cuda.current_device()))
        cfg = _lookup(table, kernel, M, N, K, G) or default_config(kernel, M, N, K, G)
    return fit_config(cfg, kernel, M, N, K, G)
