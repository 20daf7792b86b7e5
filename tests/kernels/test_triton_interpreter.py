"""Every Triton kernel against its PyTorch reference at small odd shapes.

Without a GPU this runs under TRITON_INTERPRET=1 (set in conftest.py); on a
GPU the same cases run compiled.  Inputs are fresh per case, outputs are
poisoned with NaN before each launch, and only fp16/fp32 are used (the
interpreter gets bf16 wrong).
"""
from __future__ import annotations

import pytest
import torch

from compress.kernels import reference
from compress.kernels.formats import Int3Format
from compress.kernels.tuning import KernelConfig

from .util import assert_matches, make_generator, random_int3, random_int4, random_ternary, random_x

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32, F16 = torch.float32, torch.float16

INT4_CASES = [
    # kernel, M, N, K, group size (-1 = per-channel), asymmetric, dtype
    ("int4_gemv", 1, 37, 128, 32, True, F32),
    ("int4_gemv", 1, 37, 96, -1, False, F16),
    ("int4_gemv", 1, 37, 256, 128, True, F16),
    ("int4_gemv", 3, 37, 48, 16, False, F32),
    ("int4_splitk", 2, 37, 128, 64, True, F16),
    ("int4_splitk", 5, 37, 96, 32, False, F32),
    ("int4_splitk", 17, 37, 40, -1, True, F16),  # K not a multiple of the block: masked tail
    ("int4_gemm", 65, 37, 128, 32, True, F16),
    ("int4_gemm", 70, 29, 96, -1, False, F32),
    # partial last group (G does not divide K; SmolLM2's 576 with G = 128 is the real case)
    ("int4_gemv", 1, 37, 96, 64, True, F32),
    ("int4_gemv", 2, 37, 80, 32, False, F16),
    ("int4_splitk", 3, 37, 96, 64, True, F16),
    ("int4_splitk", 17, 37, 40, 32, False, F32),  # the tail group is 8 wide, inside one 32-wide block
    ("int4_splitk", 5, 37, 96, 128, True, F32),  # G > K: one partial group
    ("int4_gemm", 65, 37, 96, 64, True, F16),
    ("int4_gemm", 70, 29, 80, 32, True, F32),
    ("int4_gemv", 1, 37, 576, 128, True, F16),
]

INT3_CASES = [
    # kernel, M, N, K (a multiple of 32), group size, asymmetric, dtype
    ("int3_gemv", 1, 37, 128, 32, True, F32),
    ("int3_gemv", 2, 37, 96, 64, False, F16),  # partial last group
    ("int3_splitk", 5, 37, 96, -1, True, F16),
    ("int3_splitk", 17, 37, 64, 16, False, F32),  # groups smaller than a 32-input plane block
    ("int3_gemm", 65, 29, 96, 32, True, F32),
]

TERNARY_CASES = [
    # kernel, M, N, K, per-tensor scale, dtype
    ("ternary_gemv", 1, 37, 128, False, F32),
    ("ternary_gemv", 1, 37, 48, True, F16),
    ("ternary_gemv", 2, 37, 96, False, F16),
    ("ternary_splitk", 2, 37, 96, False, F16),
    ("ternary_splitk", 9, 37, 128, True, F32),
    ("ternary_splitk", 33, 37, 48, False, F16),
    ("ternary_gemm", 65, 37, 96, False, F16),
    ("ternary_gemm", 70, 29, 128, True, F32),
    ("ternary_a8", 1, 37, 128, False, F16),
    ("ternary_a8", 5, 37, 48, True, F32),
    ("ternary_a8", 70, 37, 96, False, F16),
]


def _poisoned(M: int, N: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((M, N), float("nan"), dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("kernel,M,N,K,group_size,asym,dtype", INT4_CASES)
def test_int4_kernel_matches_reference(triton_kernels, kernel, M, N, K, group_size, asym, dtype):
    int4, _ = triton_kernels
    gen = make_generator(kernel, M, N, K, group_size, asym, dtype)
    qweight, scales, zeros, _ = random_int4(N, K, group_size, asym, gen, DEVICE)
    x = random_x(M, K, dtype, gen, DEVICE)
    y = getattr(int4, kernel)(x, qweight, scales, zeros, group_size, out=_poisoned(M, N, dtype))
    assert_matches(y, reference.int4_matmul(x, qweight, scales, zeros, group_size))


@pytest.mark.parametrize("kernel,M,N,K,group_size,asym,dtype", INT3_CASES)
def test_int3_kernel_matches_reference(triton_kernels, kernel, M, N, K, group_size, asym, dtype):
    int4, _ = triton_kernels  # the int4 module's kernels with BITS=3
    gen = make_generator(kernel, M, N, K, group_size, asym, dtype)
    qweight, scales, zeros, _ = random_int3(N, K, group_size, asym, gen, DEVICE)
    x = random_x(M, K, dtype, gen, DEVICE)
    y = getattr(int4, kernel)(x, qweight, scales, zeros, group_size, out=_poisoned(M, N, dtype))
    assert_matches(y, Int3Format.reference(x, qweight, scales, zeros, group_size))


@pytest.mark.parametrize("kernel,M,N,K,per_tensor,dtype", TERNARY_CASES)
def test_ternary_kernel_matches_reference(triton_kernels, kernel, M, N, K, per_tensor, dtype):
    _, ternary = triton_kernels
    gen = make_generator(kernel, M, N, K, per_tensor, dtype)
    qweight, scale, _ = random_ternary(N, K, per_tensor, gen, DEVICE)
    x = random_x(M, K, dtype, gen, DEVICE)
    y = getattr(ternary, kernel)(x, qweight, scale, out=_poisoned(M, N, dtype))
    ref_fn = reference.ternary_matmul_a8 if kernel == "ternary_a8" else reference.ternary_matmul
    assert_matches(y, ref_fn(x, qweight, scale))


@pytest.mark.parametrize(
    "kernel,config",
    [
        ("int4_gemv", KernelConfig(block_n=16, block_k=128, split_k=1)),  # block_k clamped to G=32
        ("int4_splitk", KernelConfig(block_m=16, block_n=64, block_k=16, split_k=1)),  # direct store
        ("int4_gemm", KernelConfig(block_m=16, block_n=16, block_k=64, split_k=3, group_m=1)),  # split-K GEMM
    ],
)
@pytest.mark.parametrize("K,G", [(128, 32), (112, 32)])  # 112 = 3 x 32 + a partial group of 16
def test_int4_kernels_with_other_configs(triton_kernels, kernel, config, K, G):
    int4, _ = triton_kernels
    M, N = (1 if kernel == "int4_gemv" else 19), 37
    gen = make_generator(kernel, config, K, G)
    qweight, scales, zeros, _ = random_int4(N, K, G, True, gen, DEVICE)
    x = random_x(M, K, F16, gen, DEVICE)
    y = getattr(int4, kernel)(x, qweight, scales, zeros, G, config=config, out=_poisoned(M, N, F16))
    assert_matches(y, reference.int4_matmul(x, qweight, scales, zeros, G))


@pytest.mark.parametrize(
    "kernel,config",
    [
        ("ternary_gemv", KernelConfig(block_n=64, block_k=16, split_k=5)),
        ("ternary_splitk", KernelConfig(block_m=16, block_n=16, block_k=64, split_k=1)),
        ("ternary_a8", KernelConfig(block_m=16, block_n=64, block_k=32, split_k=1)),
    ],
)
def test_ternary_kernels_with_other_configs(triton_kernels, kernel, config):
    _, ternary = triton_kernels
    M, N, K = 3, 37, 160
    gen = make_generator(kernel, config)
    qweight, scale, _ = random_ternary(N, K, False, gen, DEVICE)
    x = random_x(M, K, F16, gen, DEVICE)
    y = getattr(ternary, kernel)(x, qweight, scale, config=config, out=_poisoned(M, N, F16))
    ref_fn = reference.ternary_matmul_a8 if kernel == "ternary_a8" else reference.ternary_matmul
    assert_matches(y, ref_fn(x, qweight, scale))


def test_ternary_a8_kernel_is_bit_identical_to_the_reference_without_split_k(triton_kernels):
    """One IEEE division per output in BitLinear's order (tl.math.div_rn), so a float32 output equals
    the reference's bits, which equal transformers' BitLinear (test_reference.py)."""
    _, ternary = triton_kernels
    M, N, K = 5, 37, 160
    gen = make_generator("a8-exact")
    qweight, scale, _ = random_ternary(N, K, False, gen, DEVICE)
    x = random_x(M, K, torch.float32, gen, DEVICE) * 3
    config = KernelConfig(block_m=16, block_n=64, block_k=32, split_k=1)
    y = ternary.ternary_a8(x, qweight, scale, config=config, out=_poisoned(M, N, torch.float32))
    assert torch.equal(y.cpu(), reference.ternary_matmul_a8(x, qweight, scale).cpu())


def test_same_signature_entries_keep_leading_dims(triton_kernels):
    int4, ternary = triton_kernels
    gen = make_generator("entries")
    qweight, scales, zeros, _ = random_int4(37, 64, 32, True, gen, DEVICE)
    x = torch.randn(2, 3, 64, generator=gen).to(DEVICE)
    y = int4.int4_matmul(x, qweight, scales, zeros, 32)
    assert y.shape == (2, 3, 37)
    assert_matches(y, reference.int4_matmul(x, qweight, scales, zeros, 32))
    tq, ts, _ = random_ternary(37, 64, False, gen, DEVICE)
    assert_matches(ternary.ternary_matmul(x[:1, :1], tq, ts), reference.ternary_matmul(x[:1, :1], tq, ts))


def test_wrong_out_buffer_is_refused(triton_kernels):
    int4, _ = triton_kernels
    qweight, scales, zeros, _ = random_int4(37, 64, 32, False, make_generator("out"), DEVICE)
    x = torch.randn(2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="out must be a contiguous torch.float32 tensor with 2x37 elements"):
        int4.int4_splitk(x, qweight, scales, zeros, 32, out=torch.empty(2, 37, dtype=F16, device=DEVICE))
