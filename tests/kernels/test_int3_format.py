"""The int3 packed layout (bit planes, 32 inputs in 3 words): packing, dequantising, the matmul, bad tensors."""
import pytest
import torch

from compress.kernels import formats
from compress.kernels.dispatch import quant_matmul
from compress.kernels.formats import Int3Format, get_format, linear_format


def _codes(N=5, K=96, seed=0):
    return torch.randint(0, 8, (N, K), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_pack_unpack_round_trip_and_the_bit_plane_contract():
    q = _codes()
    qweight = formats.pack_int3(q)
    assert qweight.dtype == torch.int32 and qweight.shape == (3 * 96 // 32, 5) and qweight.is_contiguous()
    assert torch.equal(formats.unpack_int3(qweight), q)
    words = qweight.to(torch.int64) & 0xFFFFFFFF
    for r in range(3):
        for b in range(3):
            bits = (words[3 * r + b][None, :] >> torch.arange(32)[:, None]) & 1  # [j, n]
            assert torch.equal(bits.t(), (q[:, 32 * r:32 * r + 32].to(torch.int64) >> b) & 1)


def test_three_bits_per_weight_exactly():
    fmt = linear_format("int3", group_size=64, K=576, symmetric=True)
    assert isinstance(fmt, Int3Format) and fmt.label(576) == "int3 g64 sym"
    shapes = fmt.buffer_shapes(1536, 576)
    assert shapes == {"qweight": (54, 1536), "scales": (9, 1536), "zeros": None}
    assert shapes["qweight"][0] * 32 == 3 * 576


def test_dequantise_matches_the_formula_with_offset_4_or_zero_points():
    q = _codes(6, 64)
    scales = torch.rand(2, 6, dtype=torch.float16) + 0.1
    zeros = torch.rand(2, 6).mul(7).to(torch.float16)
    qweight = formats.pack_int3(q)
    s = scales.float().t().repeat_interleave(32, 1)
    sym = formats.dequantize_int3(qweight, scales, None, 32, dtype=torch.float32)
    assert torch.equal(sym, (q.float() - 4) * s)
    asym = formats.dequantize_int3(qweight, scales, zeros, 32, dtype=torch.float32)
    assert torch.equal(asym, (q.float() - zeros.float().t().repeat_interleave(32, 1)) * s)


@pytest.mark.parametrize("M", [1, 7])
def test_quant_matmul_is_x_times_the_dequantised_weight(M):
    q = _codes(10, 96)
    scales = torch.rand(3, 10) + 0.05
    qweight = formats.pack_int3(q)
    x = torch.randn(M, 96)
    w = formats.dequantize_int3(qweight, scales, None, 32, dtype=torch.float32)
    assert torch.allclose(quant_matmul(x, qweight, scales, None, fmt="int3", group_size=32), x @ w.t(), atol=1e-5)
    x.requires_grad_(True)  # through the registered op: the gradient w.r.t. x is grad @ W
    quant_matmul(x, qweight, scales, None, fmt="int3", group_size=32).sum().backward()
    assert torch.allclose(x.grad, w.sum(0).expand(M, -1), atol=1e-5)


def test_bad_int3_tensors_are_one_sentence():
    with pytest.raises(ValueError, match=r"int3 codes must lie in 0..7, got values in 8..8"):
        formats.pack_int3(torch.full((2, 32), 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"in_features K=48 must be a positive multiple of 32; pad K to 64"):
        formats.pack_int3(torch.zeros(2, 48, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"int3 qweight must be a 2-D int32 tensor \[3K/32, N\]"):
        formats.unpack_int3(torch.zeros(4, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"holds K=32 inputs, not K=64"):
        formats.unpack_int3(torch.zeros(3, 2, dtype=torch.int32), 64)
    assert "multiple of 32" in get_format("int3").shape_problem(8, 48, 16)
    assert "int3 weight of shape [8, 64] cannot use group size 48" in get_format("int3").shape_problem(8, 64, 48)
    with pytest.raises(ValueError, match=r"int3 scales must be a float tensor of shape \[2, 4\]"):
        quant_matmul(torch.randn(1, 64), torch.zeros(6, 4, dtype=torch.int32), torch.ones(3, 4), None, fmt="int3",
                     group_size=32)
