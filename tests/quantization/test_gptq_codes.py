"""GPTQ's code choice: under act_order, group parameters from the updated weights (unless ``static_groups``), and
coordinate descent over the codes (``coordinate_descent``, ``code_sweeps``)."""
import dataclasses

import pytest
import torch

from compress.quantization import QuantConfig
from compress.quantization.gptq import coordinate_descent, gptq_quantize
from compress.quantization.quantizers import code_max, dequantize
from tests.quantization.test_group_refit import CONFIGS, IDS, _drifted


def _objective(w, H, q, drift=None, alpha=0.25):
    """The layer objective GPTQ's refit and coordinate descent minimise (up to a constant)."""
    Q = dequantize(q)
    E = w - Q
    value = ((E @ H) * E).sum()
    if drift is not None:
        value = value - 2 * alpha * (Q * (w @ drift)).sum()
    return float(value)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_lazy_group_parameters_do_not_depend_on_the_block_size(cfg):
    """Rows after the block miss its updates until the block ends; the lazy parameters must add them."""
    x_fp, x, H, drift = _drifted()
    torch.manual_seed(1)
    w = torch.randn(24, 96) * 0.05
    cfg = dataclasses.replace(cfg, code_sweeps=0)
    assert not cfg.static_groups  # the default
    one = gptq_quantize(w, H, dataclasses.replace(cfg, block_size=1))  # every update applied at once: exact
    for block in (7, 128):
        q = gptq_quantize(w, H, dataclasses.replace(cfg, block_size=block))
        assert torch.equal(q.codes, one.codes)
        torch.testing.assert_close(q.scales, one.scales)
    static = gptq_quantize(w, H, dataclasses.replace(cfg, static_groups=True))
    assert not torch.equal(static.scales, one.scales)  # static groups take the original weights' ranges


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("with_drift", [False, True], ids=["gptq", "gptaq"])
def test_coordinate_descent_never_raises_the_objective_and_keeps_the_parameters(cfg, with_drift):
    x_fp, x, H, drift = _drifted()
    torch.manual_seed(2)
    w = torch.randn(40, 96) * 0.05
    D = drift if with_drift else None
    q = gptq_quantize(w, H, dataclasses.replace(cfg, code_sweeps=0), drift=D)
    before = _objective(w, H, q, D)
    one = coordinate_descent(w, H, q, drift=D, alpha=0.25)
    two = coordinate_descent(w, H, one, drift=D, alpha=0.25)
    assert _objective(w, H, one, D) < before
    assert _objective(w, H, two, D) <= _objective(w, H, one, D) * (1 + 1e-6) + 1e-9
    assert one.scales is q.scales and one.zeros is q.zeros
    assert int(one.codes.max()) <= code_max(q.bits) and one.codes.dtype == torch.uint8
    # blocks only delay the residual's updates: the same codes for any block size
    assert torch.equal(coordinate_descent(w, H, q, drift=D, alpha=0.25, block=5).codes, one.codes)


@pytest.mark.parametrize("refit", [True, False], ids=["refit", "no-refit"])
def test_code_sweeps_run_inside_gptq_by_default(refit):
    x_fp, x, H, drift = _drifted()
    torch.manual_seed(3)
    w = torch.randn(32, 96) * 0.05
    cfg = QuantConfig(group_size=32, gptq=True, symmetric=False, zero_point="float", group_refit=refit)
    assert cfg.code_sweeps == 1
    plain = gptq_quantize(w, H, dataclasses.replace(cfg, code_sweeps=0), drift=drift)
    swept = gptq_quantize(w, H, cfg, drift=drift)
    two = gptq_quantize(w, H, dataclasses.replace(cfg, code_sweeps=2), drift=drift)
    assert not torch.equal(plain.codes, swept.codes)
    assert _objective(w, H, two, drift) <= _objective(w, H, swept, drift) < _objective(w, H, plain, drift)
    if not refit:  # the sweeps keep the parameters the column loop chose
        assert torch.equal(swept.scales, plain.scales)


def test_code_sweeps_must_be_a_whole_number():
    from compress.errors import ConfigError

    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="code_sweeps"):
            QuantConfig(group_size=32, gptq=True, code_sweeps=bad)


def test_with_an_identity_hessian_a_sweep_rounds_each_weight_to_its_nearest_code():
    """No correlation between inputs: the best code of each weight, the others fixed, is its nearest grid point."""
    torch.manual_seed(5)
    w = torch.randn(12, 64)
    cfg = QuantConfig(group_size=16, symmetric=False, zero_point="float", gptq=True, code_sweeps=0)
    q = gptq_quantize(w, torch.eye(64), cfg)
    swept = coordinate_descent(w, torch.eye(64), q)
    scales = q.scales.float().t().repeat_interleave(16, dim=1)
    zeros = q.zeros.float().t().repeat_interleave(16, dim=1)
    nearest = (w / scales + zeros).round().clamp(0, 15)
    assert torch.equal(swept.codes, nearest.to(torch.uint8))
