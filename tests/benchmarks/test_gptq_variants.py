"""benchmarks/gptq_variants.py: variant parsing and the group-refit knobs it sets per variant."""
import torch

from compress.quantization import QuantConfig, gptq
from compress.quantization.quantizers import dequantize
from tests.bench_script import load_benchmark
from tests.quantization.test_group_refit import _drifted


def test_variant_fields_and_refit_knobs_are_set_for_one_variant_only():
    bench = load_benchmark("gptq_variants")
    name, fields = bench.parse_variant('p2:symmetric=false,zero_point="float",refit_passes=2,refit_damp=0.05')
    assert name == "p2" and fields == {"symmetric": False, "zero_point": "float", "refit_passes": 2, "refit_damp": 0.05}
    before = gptq.REFIT_DAMP, gptq.REFIT_PASSES, gptq.REFIT_ALPHA
    with bench._refit_knobs(0.05, 2, 1.0):
        assert (gptq.REFIT_DAMP, gptq.REFIT_PASSES, gptq.REFIT_ALPHA) == (0.05, 2, 1.0)
    assert (gptq.REFIT_DAMP, gptq.REFIT_PASSES, gptq.REFIT_ALPHA) == before
    with bench._refit_knobs(None, None, None):
        assert (gptq.REFIT_DAMP, gptq.REFIT_PASSES, gptq.REFIT_ALPHA) == before


def test_a_second_pass_rechooses_the_codes_with_the_refitted_parameters(monkeypatch):
    x_fp, x, H, drift = _drifted(k=128)
    torch.manual_seed(4)
    w = torch.randn(32, 128) * 0.05
    cfg = QuantConfig(group_size=64, gptq=True, symmetric=False, zero_point="float")
    one = gptq.gptq_quantize(w, H, cfg, drift=drift)
    monkeypatch.setattr(gptq, "REFIT_PASSES", 2)
    two = gptq.gptq_quantize(w, H, cfg, drift=drift)
    assert not torch.equal(one.codes, two.codes)
    off = gptq.gptq_quantize(w, H, QuantConfig(group_size=64, gptq=True, symmetric=False, zero_point="float",
                                               group_refit=False), drift=drift)
    err = lambda q: (x @ dequantize(q).t() - x_fp @ w.t()).pow(2).sum().item()  # noqa: E731
    assert err(two) < err(off)


def test_clip_sides_searches_each_end_alone_and_never_does_worse():
    """CLIP_SIDES (on by default; gptq_variants.py clip_sides=false) adds a search of each end of an asymmetric range."""
    from compress.quantization import quantizers

    bench = load_benchmark("gptq_variants")
    torch.manual_seed(0)
    w = torch.randn(64, 32) * torch.linspace(0.2, 2.0, 32)  # skewed groups
    w[:, 0] += 3.0
    buf = torch.empty_like(w)
    errors, before = {}, quantizers.CLIP_SIDES
    for on in (False, True):
        with bench._clip_sides(on):
            assert quantizers.CLIP_SIDES is on
            scale, zero = quantizers.int4_params(w, False, torch.float16, True, clip_search=True)
        errors[on] = quantizers._rounding_error(w, scale, zero, None, buf)
        assert quantizers.CLIP_SIDES is before
    with bench._clip_sides(None):
        assert quantizers.CLIP_SIDES is before
    assert (errors[True] <= errors[False]).all() and errors[True].sum() < errors[False].sum()


def test_clip_floor_deepens_the_search_for_one_variant_only():
    from compress.quantization import quantizers

    bench = load_benchmark("gptq_variants")
    before = quantizers.CLIP_FACTORS
    with bench._clip_floor(0.7):
        assert len(quantizers.CLIP_FACTORS) == 16
        assert quantizers.CLIP_FACTORS[0] == 1.0 and abs(quantizers.CLIP_FACTORS[-1] - 0.7) < 1e-9
    assert quantizers.CLIP_FACTORS == before
    with bench._clip_floor(None):
        assert quantizers.CLIP_FACTORS == before
