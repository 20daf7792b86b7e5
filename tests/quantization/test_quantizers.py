"""Quantiser math on small matrices: codes, scales, round-trip error bounds."""
import pytest
import torch

from compress.quantization.config import QuantConfig
from compress.quantization.quantizers import (
    dequantize,
    fake_quantize,
    fake_quantize_activations,
    int4_params,
    quantize_int4,
    quantize_ternary,
    quantize_weight,
)
from compress.kernels.reference import quantize_activations_int8

W68 = torch.tensor(
    [
        [0.10, -0.40, 0.05, 0.80, -0.02, 0.30, -0.60, 0.00],
        [0.20, 0.20, -0.10, -0.90, 0.45, 0.00, 0.15, -0.35],
        [-0.05, 0.60, 0.70, -0.25, 0.10, -0.15, 0.00, 0.05],
        [0.30, -0.30, 0.30, -0.30, 0.30, -0.30, 0.30, -0.30],
        [1.00, 0.01, -0.01, 0.02, -0.02, 0.03, -0.03, 0.00],
        [-0.50, 0.25, -0.125, 0.0625, 0.55, -0.45, 0.35, -0.05],
    ]
)


def test_ternary_codes_and_absmean_scale():
    q = quantize_ternary(W68, QuantConfig(method="ternary", scale_dtype="float32"))
    gamma = W68.abs().mean()
    assert q.scale.shape == (1,)
    assert q.scale.item() == pytest.approx(gamma.item(), rel=1e-6)
    assert set(q.codes.unique().tolist()) <= {-1, 0, 1}
    assert torch.equal(q.codes, (W68 / gamma).round().clamp(-1, 1).to(torch.int8))
    # entries below gamma/2 in magnitude become zero, the rest keep their sign
    assert torch.equal(q.codes == 0, W68.abs() < gamma / 2)


def test_absmedian_uses_the_median_and_differs_from_absmean():
    mean = quantize_ternary(W68, QuantConfig(method="ternary", scale_dtype="float32"))
    med = quantize_ternary(W68, QuantConfig(method="ternary", scale="absmedian", scale_dtype="float32"))
    lower_median = W68.abs().flatten().sort().values[(W68.numel() - 1) // 2]
    assert med.scale.item() == pytest.approx(lower_median.item())
    assert med.scale.item() < mean.scale.item()  # small weights pull the median down
    assert (med.codes == 0).sum() < (mean.codes == 0).sum()  # a smaller scale zeroes fewer weights


def test_ternary_per_channel_scales_rows():
    q = quantize_ternary(W68, QuantConfig(method="ternary", per_channel=True, scale_dtype="float32"))
    assert q.scale.shape == (6,)
    assert torch.allclose(q.scale, W68.abs().mean(dim=1))
    assert torch.allclose(dequantize(q), q.codes.float() * W68.abs().mean(dim=1, keepdim=True))


def test_ternary_scale_of_a_zero_matrix_is_clamped():
    q = quantize_ternary(torch.zeros(4, 16), QuantConfig(method="ternary"))
    assert q.scale.item() > 0 and torch.all(q.codes == 0)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [16, 32, -1])
def test_int4_rtn_round_trip_is_within_half_a_step(symmetric, group_size):
    torch.manual_seed(0)
    w = torch.randn(24, 64) * torch.linspace(0.1, 3, 64)  # uneven magnitudes across groups
    cfg = QuantConfig(group_size=group_size, symmetric=symmetric, clip_search=False)  # min-max ranges
    q = quantize_int4(w, cfg)
    G = 64 if group_size == -1 else group_size
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 15
    assert q.scales.shape == (64 // G, 24) and q.scales.dtype == torch.float16
    assert (q.zeros is None) == symmetric
    step = q.scales.float().t().repeat_interleave(G, dim=1)
    err = (dequantize(q) - w).abs()
    # The fp16 scale is rounded to nearest, so it may lie half an ulp (2**-11 relative) below max/7.5; the
    # largest positive weight is clamped to code 7 and then misses by s * (0.5 + 7.5 * 2**-11) at most.
    assert torch.all(err <= step * 0.5 * (1 + 15 * 2**-11) + 1e-6)
    # the group maximum sets the step: 2*max/15 (symmetric) or (max-min)/15 (asymmetric)
    g0 = w[:, :G]
    want = g0.abs().amax(1) / 7.5 if symmetric else (g0.amax(1).clamp(min=0) - g0.amin(1).clamp(max=0)) / 15
    assert torch.allclose(q.scales[0].float(), want, rtol=1e-3)


def test_asymmetric_zero_points_follow_the_range():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0] * 4, [-3.0, -2.0, -1.0, 0.0] * 4, [-1.0, 0.0, 1.0, 2.0] * 4])
    scale, zero = int4_params(w, symmetric=False, dtype=torch.float32)
    assert torch.allclose(scale, torch.tensor([3.0, 3.0, 3.0]) / 15)
    assert zero.tolist() == [0.0, 15.0, 5.0]  # all-positive rows start at code 0, all-negative end at 15
    q = quantize_int4(w, QuantConfig(group_size=16, symmetric=False, scale_dtype="float32"))
    assert torch.allclose(dequantize(q), w, atol=1e-5)  # these values lie on the grid
    assert q.codes[:, 0].tolist() == [0, 0, 0]


def test_asymmetric_beats_symmetric_on_one_sided_weights():
    torch.manual_seed(1)
    w = torch.rand(16, 64)  # all positive: symmetric wastes half its codes
    sym = (dequantize(quantize_int4(w, QuantConfig(group_size=32))) - w).pow(2).mean()
    asym = (dequantize(quantize_int4(w, QuantConfig(group_size=32, symmetric=False))) - w).pow(2).mean()
    assert asym < sym / 2


@pytest.mark.parametrize("cfg", [QuantConfig(group_size=16), QuantConfig(method="ternary", scale="absmedian")])
def test_fake_quantize_is_the_dequantised_rtn_weight(cfg):
    torch.manual_seed(2)
    w = torch.randn(8, 32, dtype=torch.float64, requires_grad=True)
    fq = fake_quantize(w, cfg)
    assert fq.dtype == torch.float64 and not fq.requires_grad
    assert torch.equal(fq, dequantize(quantize_weight(w, cfg)).double())
    assert not torch.equal(fq, w.detach())


def test_activation_fake_quant_matches_the_kernel_reference():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 32) * 4
    x_q, inv = quantize_activations_int8(x)
    want = (x_q.float() / inv[:, None]).reshape(2, 5, 32)
    assert torch.equal(fake_quantize_activations(x), want)
    assert x_q.abs().max() == 127


def test_a_partial_last_group_gets_its_own_scale():
    # K = 96 with G = 64: GPTQ's format keeps a half group at the end (K = 576, G = 128 in SmolLM2)
    torch.manual_seed(4)
    w = torch.randn(8, 96) * torch.cat([torch.ones(64), torch.full((32,), 0.1)])
    q = quantize_int4(w, QuantConfig(group_size=64, clip_search=False))  # min-max ranges
    assert q.scales.shape == (2, 8) and q.codes.shape == (8, 96)
    assert torch.allclose(q.scales[1].float(), w[:, 64:].abs().amax(1) / 7.5, rtol=1e-3)
    step = torch.cat([q.scales[0].float()[:, None].expand(8, 64), q.scales[1].float()[:, None].expand(8, 32)], 1)
    assert torch.all((dequantize(q) - w).abs() <= step / 2 * (1 + 15 * 2**-11) + 1e-7)  # see above: fp16 scale to nearest


def test_float_zero_points_reproduce_a_min_max_grid_exactly():
    # GGUF Q4_1 stores w = d * q + m per block of 32 (SmolLM2's source): a fractional zero point recovers it
    g = torch.Generator().manual_seed(5)
    d = torch.rand(6, 2, 1, generator=g) * 0.1 + 0.01
    m = torch.randn(6, 2, 1, generator=g) * 0.1
    q = torch.randint(0, 16, (6, 2, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15  # every block spans the whole code range
    w = (q * d + m).reshape(6, 64)
    cfg = QuantConfig(group_size=32, symmetric=False, zero_point="float", scale_dtype="float32")
    out = quantize_int4(w, cfg)
    assert torch.equal(out.codes.reshape(6, 2, 32), q.to(torch.uint8))
    assert torch.allclose(dequantize(out), w, atol=1e-6)
    assert torch.allclose(out.zeros.t(), (-m / d).reshape(6, 2), rtol=1e-4)
    integer = quantize_int4(w, QuantConfig(group_size=32, symmetric=False, scale_dtype="float32"))
    assert (dequantize(integer) - w).abs().max() > 1e-3  # whole-code zero points cannot


# --------------------------------------------------------------------------- fp16 scales and clip search

def test_stored_scales_round_to_nearest_not_up():
    from compress.quantization.quantizers import _stored

    one_ulp = 2.0**-10  # fp16 spacing in [1, 2)
    x = torch.tensor([1 + one_ulp / 2, 1 + one_ulp / 2 + 2**-20, 1 + one_ulp / 4, 1 + 3 * one_ulp / 4])
    got = _stored(x, torch.float16).tolist()
    # a tie goes to the even neighbour (1.0), just above it goes up, a quarter ulp goes down, three quarters up
    assert got == [1.0, 1 + one_ulp, 1.0, 1 + one_ulp]


def test_a_scale_rounded_down_keeps_the_codes_in_range():
    # max|w| / 7.5 just above an fp16 value: the stored scale is that value (below), and the extreme weights
    # land on the end codes after the clamp
    s16 = 0.25 * (1 + 2**-10)
    m = 7.5 * s16 * (1 + 2**-13)  # a fifth of an ulp above 7.5 * s16
    w = torch.tensor([[m, -m, 0.3 * m, -0.7 * m] * 8])  # one group of 32
    q = quantize_int4(w, QuantConfig(group_size=32, clip_search=False))
    assert q.scales.float().item() == pytest.approx(s16, rel=0, abs=0)
    assert int(q.codes.max()) == 15 and int(q.codes.min()) == 0
    assert q.codes[0, 0] == 15 and q.codes[0, 1] == 0
    asym = quantize_int4(w, QuantConfig(group_size=32, symmetric=False, clip_search=False))
    assert 0 <= int(asym.codes.min()) and int(asym.codes.max()) <= 15
    assert (dequantize(asym) - w).abs().max() <= asym.scales.float().max() * 0.51


def _sq_err(w, cfg):
    return (dequantize(quantize_int4(w, cfg)) - w).pow(2).sum(dim=1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_never_raises_the_squared_error_and_clips_outliers(symmetric):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(32, 64, generator=g) * 0.02
    w[:, 5] = 0.2 * torch.sign(torch.randn(32, generator=g))  # one outlier per row: a min-max step is coarse
    on = QuantConfig(group_size=64, symmetric=symmetric)
    off = QuantConfig(group_size=64, symmetric=symmetric, clip_search=False)
    assert on.clip_search and not off.clip_search
    e_on, e_off = _sq_err(w, on), _sq_err(w, off)
    assert torch.all(e_on <= e_off * (1 + 1e-6))
    assert e_on.sum() < 0.97 * e_off.sum()
    shrunk = quantize_int4(w, on).scales.float() < quantize_int4(w, off).scales.float() * 0.99
    assert shrunk.float().mean() > 0.5  # most rows chose a smaller step


def test_clip_search_weighs_columns():
    from compress.quantization.quantizers import int4_params, int4_codes, int4_dequant

    g = torch.Generator().manual_seed(8)
    w = torch.randn(64, 32, generator=g) * 0.05
    w[:, 0] = 0.3  # an outlier column
    c = torch.ones(32)
    c[0] = 100.0  # ... that carries most of the input energy: clipping it is costly
    plain_s, _ = int4_params(w, True, torch.float16, clip_search=True)
    heavy_s, _ = int4_params(w, True, torch.float16, clip_search=True, weight=c)

    def weighted(s):
        return ((int4_dequant(int4_codes(w, s, None), s, None) - w).pow(2) * c).sum()

    assert torch.all(heavy_s >= plain_s)
    assert weighted(heavy_s) < weighted(plain_s)


def test_clip_search_ignores_the_padding_of_a_partial_group():
    torch.manual_seed(9)
    w = torch.randn(8, 96)
    q = quantize_int4(w, QuantConfig(group_size=64))
    alone = quantize_int4(w[:, 64:], QuantConfig(group_size=32))  # the last 32 columns as a whole group
    assert torch.equal(q.scales[1], alone.scales[0]) and torch.equal(q.codes[:, 64:], alone.codes)
