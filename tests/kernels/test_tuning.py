"""Launch configs: fitting to a shape, the candidate lists, and tuned winners read from JSON."""
from __future__ import annotations

import json

import pytest
import torch

from compress.kernels import tuning
from compress.kernels.tuning import KernelConfig


def test_fit_config_keeps_blocks_inside_one_scale_group():
    cfg = tuning.fit_config(KernelConfig(block_k=128, split_k=1), "int4_splitk", 4, 37, 256, 32)
    assert cfg.block_k == 32  # a K-block must not straddle two groups
    per_channel = tuning.fit_config(KernelConfig(block_k=128), "int4_splitk", 4, 37, 96, 96)
    assert per_channel.block_k == 128  # one group per row: the tail is masked instead
    assert tuning.fit_config(KernelConfig(block_k=8, block_m=1), "ternary_splitk", 4, 37, 96).block_k >= 16  # tl.dot minimum
    assert tuning.fit_config(KernelConfig(block_k=16), "ternary_a8", 4, 37, 96).block_k == 32  # int8 dot minimum
    assert tuning.fit_config(KernelConfig(block_m=16), "int4_gemv", 1, 37, 96, 32).block_m == 1


def test_fit_config_drops_k_splits_that_would_get_no_work():
    cfg = tuning.fit_config(KernelConfig(block_k=64, split_k=16), "int4_gemv", 1, 37, 128, 64)
    assert cfg.split_k == 2  # K=128 holds only two 64-wide blocks


@pytest.mark.parametrize("kernel", sorted(tuning.KERNELS))
def test_candidates_are_valid_and_distinct(kernel):
    M = {"gemv": 1, "splitk": 16, "gemm": 2048, "a8": 16}[tuning.KERNELS[kernel][1]]
    K, G = 4096, 128
    grouped = kernel.startswith(("int4", "int3"))
    cands = tuning.candidates(kernel, M, 4096, K, G if grouped else 0)
    assert len(cands) >= 8 and len(set(cands)) == len(cands)
    per_word = {"int4": 8, "int3": 32}.get(kernel[:4], 16)
    for c in cands:
        assert c.block_k % per_word == 0 and (not grouped or G % c.block_k == 0)
        assert c.split_k * c.block_k <= K or c.split_k == 1
        assert c == tuning.fit_config(c, kernel, M, 4096, K, G if grouped else 0)


def test_tuned_json_is_read_and_looked_up_by_bucket(tmp_path):
    device = "Fake GPU 9000 (80GB)"
    assert tuning.device_slug(device) == "fake-gpu-9000-80gb"
    winner = KernelConfig(block_m=1, block_n=256, block_k=64, split_k=8, num_warps=2, num_stages=1)
    key = tuning.config_key("int4_gemv", 1, 4096, 4096, 128)
    assert key == "int4_gemv|M1|N4096|K4096|G128"
    other = KernelConfig(block_m=16, block_n=32, block_k=64, split_k=4)
    table = {key: winner.to_dict(), tuning.config_key("int4_splitk", 16, 4096, 4096, 128): other.to_dict()}
    (tmp_path / "fake-gpu-9000-80gb.json").write_text(json.dumps({"device": device, "configs": table}))
    loaded = tuning.load_tuned(device, str(tmp_path))
    assert loaded[key] == winner
    assert tuning._lookup(loaded, "int4_gemv", 1, 4096, 4096, 128) == winner
    assert tuning._lookup(loaded, "int4_splitk", 9, 4096, 4096, 128) == other  # nearest tuned bucket (16)
    assert tuning._lookup(loaded, "int4_splitk", 9, 4096, 4096, 64) is None  # other group size: untuned
    assert tuning.load_tuned("No Such GPU", str(tmp_path)) == {}


def test_interpreter_or_cpu_gets_the_single_fixed_config(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tuning.is_interpreter()
    for kernel in tuning.KERNELS:
        cfg = tuning.get_config(kernel, 3, 37, 128, 32 if kernel.startswith("int4") else 0, torch.device("cpu"))
        raw = tuning.interpreter_config(kernel, 3)
        assert cfg == tuning.fit_config(raw, kernel, 3, 37, 128, 32 if kernel.startswith("int4") else 0)


def test_default_gemv_config_splits_k_to_fill_the_gpu():
    cfg = tuning.default_config("int4_gemv", 1, 576, 1536, 128)
    programs = -(-576 // cfg.block_n) * cfg.split_k
    assert cfg.split_k > 1 and programs >= 40
    assert tuning.m_bucket(1) == 1 and tuning.m_bucket(17) == 32 and tuning.m_bucket(10**6) == 4096
