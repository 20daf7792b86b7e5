"""GPTQ's code choice under act_order: group parameters from the updated weights (LAZY_GROUPS), and coordinate
descent over the codes (``coordinate_descent``, CD_SWEEPS)."""
import dataclasses

import pytest
import torch

from compress.quantization import QuantConfig, gptq
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
def test_lazy_group_parameters_do_not_depend_on_the_block_size(cfg, monkeypatch):
    """Rows after the block miss its updates until the block ends; the lazy parameters must add them."""
    x_fp, x, H, drift = _drifted()
    torch.manual_seed(1)
    w = torch.randn(24, 96) * 0.05
    monkeypatch.setattr(gptq, "LAZY_GROUPS", True)
    one = gptq_quantize(w, H, dataclasses.replace(cfg, block_size=1))  # every update applied at once: exact
    for block in (7, 128):
        q = gptq_quantize(w, H, dataclasses.replace(cfg, block_size=block))
        assert torch.equal(q.codes, one.codes)
        torch.testing.assert_close(q.scales, one.scales)
    monkeypatch.setattr(gptq, "LAZY_GROUPS", False)
    static = gptq_quantize(w, H, cfg)
    assert not torch.equal(static.scales, one.scales)  # static groups take the original weights' ranges


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("with_drift", [False, True], ids=["gptq", "gptaq"])
def test_coordinate_descent_never_raises_the_objective_and_keeps_the_parameters(cfg, with_drift):
    x_fp, x, H, drift = _drifted()
    torch.manual_seed(2)
    w = torch.randn(40, 96) * 0.05
    D = drift if with_drift else None
    q = gptq_quantize(w, H, cfg, drift=D)
    before = _objective(w, H, q, D)
    one = coordinate_descent(w, H, q, drift=D, alpha=0.25)
    two = coordinate_descent(w, H, one, drift=D, alpha=0.25)
    assert _objective(w, H, one, D) < before
    assert _objective(w, H, two, D) <= _objective(w, H, one, D) * (1 + 1e-6) + 1e-9
    assert one.scales is q.scales and one.zeros is q.zeros
    assert int(one.codes.max()) <= code_max(q.bits) and one.codes.dtype == torch.uint8
    # blocks only delay the residual's updates: the same codes for any block size
    assert torch.equal(coordinate_descent(w, H, q, drift=D, alpha=0.25, block=5).codes, one.codes)


def test_coordinate_descent_sweeps_run_inside_gptq_when_asked(monkeypatch):
    x_fp, x, H, drift = _drifted()
    torch.manual_seed(3)
    w = torch.randn(32, 96) * 0.05
    cfg = QuantConfig(group_size=32, gptq=True, symmetric=False, zero_point="float")
    plain = gptq_quantize(w, H, cfg, drift=drift)
    monkeypatch.setattr(gptq, "CD_SWEEPS", 2)
    swept = gptq_quantize(w, H, cfg, drift=drift)
    assert not torch.equal(plain.codes, swept.codes)
    assert _objective(w, H, swept, drift) < _objective(w, H, plain, drift)
