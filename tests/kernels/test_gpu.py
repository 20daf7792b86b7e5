"""Compiled Triton kernels on CUDA at real shapes (skipped without a GPU)."""
from __future__ import annotations

import warnings

import pytest
import torch

from compress.kernels import dispatch, quant_matmul, reference

from .util import assert_matches, make_generator, random_int4, random_ternary, random_x

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

# (N, K): 4096^2 and SmolLM2-135M's q/o, up/gate and down projections
SHAPES = [(4096, 4096), (576, 576), (1536, 576), (576, 1536)]
BATCHES = [1, 16, 128]


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    dispatch.reset_fallbacks()


def _no_fallback(fn):
    """Run fn with warnings as errors and check dispatch really launched Triton."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = fn()
    assert not dispatch._FAILED
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", BATCHES)
@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("group_size", [128, -1])
def test_int4_real_shapes(N, K, M, dtype, group_size):
    gen = make_generator("gpu-int4", N, K, M, dtype, group_size)
    qweight, scales, zeros, _ = random_int4(N, K, group_size, True, gen, "cuda")
    x = random_x(M, K, dtype, gen, "cuda")
    y = _no_fallback(lambda: quant_matmul(x, qweight, scales, zeros, fmt="int4", group_size=group_size))
    assert_matches(y, reference.int4_matmul(x, qweight, scales, zeros, group_size))


@pytest.mark.parametrize("fmt", ["ternary", "ternary_a8"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", BATCHES)
@pytest.mark.parametrize("N,K", SHAPES)
def test_ternary_real_shapes(N, K, M, dtype, fmt):
    gen = make_generator("gpu-ternary", N, K, M, dtype, fmt)
    qweight, scale, _ = random_ternary(N, K, False, gen, "cuda")
    x = random_x(M, K, dtype, gen, "cuda")
    y = _no_fallback(lambda: quant_matmul(x, qweight, scale, fmt=fmt))
    ref_fn = reference.ternary_matmul_a8 if fmt == "ternary_a8" else reference.ternary_matmul
    assert_matches(y, ref_fn(x, qweight, scale))


def test_cuda_graphs_through_torch_compile():
    gen = make_generator("gpu-graph")
    qweight, scales, zeros, _ = random_int4(1536, 576, 64, True, gen, "cuda")
    tq, ts, _ = random_ternary(576, 1536, False, gen, "cuda")

    def mlp(x):
        h = torch.nn.functional.silu(quant_matmul(x, qweight, scales, zeros, fmt="int4", group_size=64))
        return quant_matmul(h, tq, ts, fmt="ternary")

    compiled = torch.compile(mlp, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, record, replay
        x = random_x(1, 576, torch.float16, gen, "cuda")
        y = compiled(x)
    assert_matches(y.clone(), mlp(x))
