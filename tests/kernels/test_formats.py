"""The packed layouts: bit positions, round trips on odd shapes, dequantisation, clear errors."""
from __future__ import annotations

import pytest
import torch

from compress.kernels import formats

from .util import make_generator


@pytest.mark.parametrize("N", [1, 37])
@pytest.mark.parametrize("K", [8, 48, 96, 128, 576])
def test_int4_round_trip_is_bit_exact(N, K):
    q = torch.randint(0, 16, (N, K), generator=make_generator("int4", N, K))
    qweight = formats.pack_int4(q)
    assert qweight.dtype == torch.int32 and qweight.shape == (K // 8, N) and qweight.is_contiguous()
    assert torch.equal(formats.unpack_int4(qweight, K).long(), q)


@pytest.mark.parametrize("N", [1, 37])
@pytest.mark.parametrize("K", [16, 48, 96, 128])
def test_ternary_round_trip_is_bit_exact(N, K):
    c = torch.randint(0, 3, (N, K), generator=make_generator("ternary", N, K))
    qweight = formats.pack_ternary(c)
    assert qweight.dtype == torch.int32 and qweight.shape == (K // 16, N) and qweight.is_contiguous()
    assert torch.equal(formats.unpack_ternary(qweight, K).long(), c)


def test_int4_layout_nibble_j_of_word_r_holds_k_8r_plus_j():
    N, K = 5, 24
    q = torch.arange(N * K).reshape(N, K) % 16
    qweight = formats.pack_int4(q)
    for n in range(N):
        for k in range(K):
            word = int(qweight[k // 8, n]) & 0xFFFFFFFF
            assert (word >> (4 * (k % 8))) & 0xF == q[n, k]


def test_ternary_layout_field_j_of_word_r_holds_k_16r_plus_j():
    N, K = 3, 32
    c = torch.arange(N * K).reshape(N, K) % 3
    qweight = formats.pack_ternary(c)
    for n in range(N):
        for k in range(K):
            word = int(qweight[k // 16, n]) & 0xFFFFFFFF
            assert (word >> (2 * (k % 16))) & 0x3 == c[n, k]


def test_top_nibble_sets_the_sign_bit_and_still_round_trips():
    q = torch.full((2, 8), 15)
    qweight = formats.pack_int4(q)
    assert (qweight == -1).all()  # 0xFFFFFFFF as int32
    assert torch.equal(formats.unpack_int4(qweight).long(), q)


@pytest.mark.parametrize(
    "K,group_size,asym",
    [(128, 32, True), (128, 64, False), (128, 128, True), (128, -1, False),
     (96, 64, True), (576, 128, False), (40, 32, True), (96, 128, True)],  # partial last groups; G > K
)
def test_dequantize_int4_matches_the_formula(K, group_size, asym):
    N = 37
    gen = make_generator("deq", K, group_size, asym)
    G = K if group_size == -1 else group_size
    rows = -(-K // G)
    q = torch.randint(0, 16, (N, K), generator=gen)
    s = torch.rand(rows, N, generator=gen).half()
    z = torch.randint(0, 16, (rows, N), generator=gen).half() if asym else None
    w = formats.dequantize_int4(formats.pack_int4(q), s, z, group_size, dtype=torch.float32)
    assert w.shape == (N, K)
    for n, k in [(0, 0), (36, K - 1), (5, min(G, K) - 1), (20, min(G, K - 1)), (11, K - 8)]:
        zero = 8.0 if z is None else float(z[k // G, n])
        assert w[n, k].item() == pytest.approx((int(q[n, k]) - zero) * float(s[k // G, n]), rel=1e-6)
    assert formats.dequantize_int4(formats.pack_int4(q), s, z, group_size).dtype == torch.float16


def test_dequantize_ternary_per_channel_and_per_tensor_scale():
    N, K = 37, 48
    c = torch.randint(0, 3, (N, K), generator=make_generator("tern-deq"))
    qweight = formats.pack_ternary(c)
    scale = torch.rand(N) + 0.5
    w = formats.dequantize_ternary(qweight, scale)
    assert torch.equal(w, (c - 1).float() * scale[:, None])
    w_tensor = formats.dequantize_ternary(qweight, torch.tensor(0.25))
    assert torch.equal(w_tensor, (c - 1).float() * 0.25)
    assert formats.broadcast_ternary_scale(torch.tensor([2.0]), 4).tolist() == [2.0] * 4


@pytest.mark.parametrize(
    "pack,shape,needle",
    [
        (formats.pack_int4, (37, 12), "int4 weight of shape [37, 12] cannot be packed: in_features K=12 must be a positive multiple of 8; pad K to 16"),
        (formats.pack_ternary, (37, 40), "ternary weight of shape [37, 40] cannot be packed: in_features K=40 must be a positive multiple of 16; pad K to 48"),
    ],
)
def test_bad_k_raises_a_message_naming_shape_and_fix(pack, shape, needle):
    with pytest.raises(ValueError) as err:
        pack(torch.zeros(shape, dtype=torch.int64))
    assert needle in str(err.value)


def test_group_size_that_does_not_divide_k_gets_a_partial_last_group():
    assert formats.shape_problem("int4", 576, 576, 128) is None  # SmolLM2: 4 groups of 128 and one of 64
    assert formats.int4_num_groups(576, 128) == 5 and formats.int4_num_groups(512, 128) == 4
    assert formats.shape_problem("int4", 37, 96, 64) is None
    assert formats.shape_problem("int4", 37, 96, 128) is None  # G > K: one partial group
    assert formats.resolve_group_size(128, 96) == 128 and formats.resolve_group_size(-1, 96) == 96
    assert formats.shape_problem("int4", 37, 96, -1) is None  # per-channel
    assert formats.shape_problem("ternary", 37, 96) is None
    assert "unknown packed format" in formats.shape_problem("int2", 37, 96)


def test_group_size_that_is_not_a_power_of_two_names_the_shape_and_the_fix():
    qweight = formats.pack_int4(torch.zeros(37, 96, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"int4 weight of shape \[37, 96\] cannot use group size 48: use a power of two >= 16"):
        formats.check_int4(qweight, torch.ones(2, 37), None, 48)
    assert "cannot use group size 8" in formats.shape_problem("int4", 37, 96, 8)


def test_scales_without_the_partial_group_row_are_refused():
    # K // G rows (dropping the tail group) is the mistake a divisible-only layout invites
    qweight = formats.pack_int4(torch.zeros(37, 576, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"int4 scales must be a float tensor of shape \[5, 37\] \(ceil\(K/G\) x N "
                                         r"for K=576, G=128; the last group covers the 64 remaining inputs\), got .* \[4, 37\]"):
        formats.dequantize_int4(qweight, torch.ones(4, 37), None, 128)


def test_codes_out_of_range_or_float_are_refused():
    with pytest.raises(ValueError, match="int4 codes must lie in 0..15"):
        formats.pack_int4(torch.full((2, 8), 16))
    with pytest.raises(ValueError, match="ternary codes must lie in 0..2"):
        formats.pack_ternary(torch.full((2, 16), -1))  # w instead of c = w + 1
    with pytest.raises(ValueError, match="2-D integer tensor"):
        formats.pack_int4(torch.zeros(2, 8))


def test_scales_of_the_wrong_shape_are_refused():
    qweight = formats.pack_int4(torch.zeros(37, 128, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"scales must be a float tensor of shape \[4, 37\]"):
        formats.check_int4(qweight, torch.ones(37, 4), None, 32)
    with pytest.raises(ValueError, match=r"zeros must be None .* shape \[4, 37\]"):
        formats.check_int4(qweight, torch.ones(4, 37), torch.ones(4, 36), 32)
    tq = formats.pack_ternary(torch.zeros(37, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"ternary scale must be a float tensor of shape \[37\]"):
        formats.check_ternary(tq, torch.ones(36))
    with pytest.raises(ValueError, match="holds K=32 inputs, not K=48"):
        formats.unpack_ternary(tq, 48)
