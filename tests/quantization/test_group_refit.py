"""GPTQ's group refit: least-squares scales / float zero points for the fixed codes (issue 18)."""
import dataclasses

import pytest
import torch

from compress.quantization import QuantConfig, QuantError
from compress.quantization.gptq import accumulate_drift, gptq_quantize, refit_group_params
from compress.quantization.quantizers import dequantize, int4_params
from tests.quantization.test_gptq import correlated_inputs, hessian


def _drifted(k=96, n=1024):
    """Original inputs, the drifted (quantised-model) inputs, their Hessian and GPTAQ's drift dXX^T."""
    x_fp = correlated_inputs(n=n, k=k)
    x = x_fp + 0.2 * correlated_inputs(n=n, k=k, seed=3)
    H, _ = hessian(x)
    drift, count = torch.zeros(k, k), 0
    for a, b in zip(x_fp.split(300), x.split(300)):
        count = accumulate_drift(drift, count, a, b)
    return x_fp, x, H, drift


CONFIGS = [
    QuantConfig(group_size=32, gptq=True, symmetric=False, zero_point="float", group_refit=False),
    QuantConfig(group_size=32, gptq=True, symmetric=False, group_refit=False),
    QuantConfig(group_size=32, gptq=True, group_refit=False),
    QuantConfig(group_size=64, gptq=True, symmetric=False, zero_point="float", group_refit=False),  # 96 = 64 + 32
]
IDS = ["float-zero", "integer-zero", "symmetric", "partial-group"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("with_drift", [False, True], ids=["gptq", "gptaq"])
def test_refit_never_increases_the_layer_error_and_keeps_the_codes(cfg, with_drift):
    torch.manual_seed(0)
    x_fp, x, H, drift = _drifted()
    w = torch.randn(40, 96) * 0.05
    w[3] = 0.0  # a row whose codes are all alike: the 2x2 systems are singular there
    D = drift if with_drift else None
    q = gptq_quantize(w, H, cfg, drift=D)
    float_zero = cfg.zero_point == "float" and not cfg.symmetric
    r = refit_group_params(w, H, q, drift=D, alpha=1.0, float_zero=float_zero, dtype=torch.float16)
    target = (x_fp if with_drift else x) @ w.t()

    def row_errors(qq):
        return (x @ dequantize(qq).t() - target).pow(2).sum(0)

    before, after = row_errors(q), row_errors(r)
    assert torch.equal(r.codes, q.codes)
    assert (after <= before * (1 + 1e-4) + 1e-6).all(), (after - before).max()
    assert after.sum() < 0.99 * before.sum()  # and it does lower it
    assert (r.scales.float() > 0).all() and r.scales.dtype == q.scales.dtype
    if cfg.symmetric:
        assert r.zeros is None
    elif not float_zero:  # integer zero points stay the codes they were
        assert torch.equal(r.zeros, q.zeros)
    assert torch.isfinite(dequantize(r)).all()


def test_the_refit_is_on_by_default_and_off_leaves_gptq_as_it_was():
    x_fp, x, H, drift = _drifted(k=128)
    torch.manual_seed(1)
    w = torch.randn(24, 128) * 0.05
    # static groups and no code sweeps: the refit alone, after parameters that are easy to recompute here
    on_cfg = QuantConfig(group_size=32, gptq=True, symmetric=False, zero_point="float", static_groups=True,
                         code_sweeps=0)
    assert on_cfg.group_refit
    off_cfg = dataclasses.replace(on_cfg, group_refit=False)
    on, off = gptq_quantize(w, H, on_cfg, drift=drift), gptq_quantize(w, H, off_cfg, drift=drift)
    assert torch.equal(on.codes, off.codes)
    # off: static groups, each from the original weights' clip search weighted by diag H
    for g in range(4):
        cols = slice(32 * g, 32 * (g + 1))
        s, z = int4_params(w[:, cols], False, torch.float16, True, clip_search=True, weight=H.diagonal()[cols])
        assert torch.equal(off.scales[g], s.to(torch.float16)) and torch.equal(off.zeros[g], z.to(torch.float16))
    assert not torch.equal(on.scales, off.scales)
    target = x_fp @ w.t()
    err = {k: (x @ dequantize(q).t() - target).pow(2).mean().item() for k, q in (("on", on), ("off", off))}
    assert err["on"] < err["off"]


def test_gptq_with_identity_hessian_refits_round_to_nearest_scales_by_least_squares():
    torch.manual_seed(2)
    w = torch.randn(12, 64)
    cfg = QuantConfig(group_size=16, symmetric=False, zero_point="float", gptq=True, code_sweeps=0)
    q = gptq_quantize(w, torch.eye(64), cfg)
    plain = gptq_quantize(w, torch.eye(64), dataclasses.replace(cfg, group_refit=False))
    assert torch.equal(q.codes, plain.codes)
    assert (w - dequantize(q)).pow(2).sum() < (w - dequantize(plain)).pow(2).sum()


def test_refit_rejects_mismatched_shapes():
    w, H = torch.randn(8, 32), torch.eye(32)
    q = gptq_quantize(w, H, QuantConfig(group_size=16, gptq=True, group_refit=False))
    with pytest.raises(QuantError, match="weight .* codes"):
        refit_group_params(torch.randn(8, 48), H, q)
    with pytest.raises(QuantError, match="Hessian"):
        refit_group_params(w, torch.eye(16), q)


def test_group_refit_round_trips_through_the_flat_form():
    cfg = QuantConfig(group_size=64, gptq=True, group_refit=False)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["group_refit"] is False


def test_a_shared_target_product_gives_what_each_computes_alone():
    """gptq_quantize computes V = W (H + alpha D) once for both refits and the sweep; passing it changes nothing."""
    from compress.quantization.refine import coordinate_descent, target_product

    x_fp, x, H, drift = _drifted(k=96)
    torch.manual_seed(4)
    w = torch.randn(20, 96) * 0.05
    cfg = QuantConfig(group_size=32, gptq=True, symmetric=False, zero_point="float", group_refit=False,
                      code_sweeps=0)
    q = gptq_quantize(w, H, cfg, drift=drift)
    V = target_product(w, H, drift, 0.25)
    exact = w.double() @ H.double() + 0.25 * w.double() @ drift.double()
    assert (V.double() - exact).abs().max() < 1e-5 * exact.abs().max()
    alone = refit_group_params(w, H, q, drift=drift, alpha=0.25, float_zero=True)
    shared = refit_group_params(w, H, q, drift=drift, alpha=0.25, float_zero=True, target=V)
    assert torch.equal(alone.scales, shared.scales) and torch.equal(alone.zeros, shared.zeros)
    swept = coordinate_descent(w, H, q, drift=drift, alpha=0.25)
    assert torch.equal(swept.codes, coordinate_descent(w, H, q, drift=drift, alpha=0.25, target=V).codes)
