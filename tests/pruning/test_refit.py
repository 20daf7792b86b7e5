"""The least-squares refit after pruning: its math on small matrices, and on tiny models of every family."""
import copy
import subprocess
import sys

import pytest
import torch

from compress.arch import adapter_for
from compress.errors import ConfigError
from compress.pruning import PruneConfig, prune
from compress.pruning.refit import refit_weight
from tests.pruning.helpers import FAMILIES, FAST, calib, gqa_model, logits


def test_refit_recovers_removed_inputs_that_the_kept_ones_determine():
    g = torch.Generator().manual_seed(0)
    kept_in = torch.randn(400, 6, generator=g, dtype=torch.float64)
    mix = torch.randn(6, 3, generator=g, dtype=torch.float64)
    a_o = torch.cat([kept_in, kept_in @ mix], 1)  # the 3 removed inputs are linear in the 6 kept ones
    W = torch.randn(5, 9, generator=g, dtype=torch.float64)
    a_p = a_o[:, :6]
    W_kept = W[:, :6].clone()
    fitted = refit_weight(W, W_kept, a_p.T @ a_p, a_p.T @ a_o, damp=1e-9)
    assert torch.allclose(a_p @ fitted.T, a_o @ W.T, atol=1e-5)
    # plain pruning misses what the removed inputs carried
    assert (a_p @ W_kept.T - a_o @ W.T).abs().max() > 0.1


def test_refit_damp_pulls_towards_plain_pruning_and_never_raises_the_calibration_error():
    g = torch.Generator().manual_seed(1)
    a_o = torch.randn(300, 8, generator=g, dtype=torch.float64)
    a_p = a_o[:, :5] + 0.1 * torch.randn(300, 5, generator=g, dtype=torch.float64)  # upstream drift too
    W = torch.randn(4, 8, generator=g, dtype=torch.float64)
    W_kept = W[:, :5].clone()
    H, G = a_p.T @ a_p, a_p.T @ a_o
    err = lambda w: float(((a_p @ w.T - a_o @ W.T) ** 2).sum())  # noqa: E731
    gentle, strong = refit_weight(W, W_kept, H, G, damp=1e6), refit_weight(W, W_kept, H, G, damp=1e-3)
    assert torch.allclose(gentle, W_kept, atol=1e-4)
    assert err(strong) < err(gentle) <= err(W_kept) + 1e-9


def test_refit_falls_back_when_the_inputs_are_rank_deficient():
    a_p = torch.zeros(50, 4, dtype=torch.float64)  # a silent projection: H is all zero
    W = torch.ones(3, 6, dtype=torch.float64)
    fitted = refit_weight(W, W[:, :4], a_p.T @ a_p, torch.zeros(4, 6, dtype=torch.float64), damp=0.1)
    assert torch.isfinite(fitted).all()


def _output_error(model, reference, ids) -> float:
    return float((logits(model, ids) - logits(reference, ids)).pow(2).mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_refit_brings_every_family_closer_to_the_original_on_its_calibration_text(family):
    original = gqa_model(family)
    ids = calib(n=16, seq_len=24)
    importance = "activation" if family == "bert" else "taylor"
    plain, fitted = copy.deepcopy(original), copy.deepcopy(original)
    prune(plain, 0.4, data=ids, importance=importance, refit=False, **FAST)
    report = prune(fitted, 0.4, data=ids, importance=importance, refit=True, refit_damp=0.01, **FAST)
    a = adapter_for(fitted)
    assert report.refitted == 2 * a.num_layers
    for i in range(a.num_layers):  # the same widths: the refit changes values, never shapes
        p, q = a.layer(i), adapter_for(plain).layer(i)
        assert p.o.weight.shape == q.o.weight.shape and p.mlp_out.weight.shape == q.mlp_out.weight.shape
    assert _output_error(fitted, original, ids) < _output_error(plain, original, ids)


def test_by_default_the_output_projections_are_the_originals_surviving_columns():
    original = gqa_model("llama")
    model = copy.deepcopy(original)
    report = prune(model, 0.4, data=calib(), **FAST)  # the refit is opt-in
    assert report.refitted == 0
    w0, w1 = adapter_for(original).layer(1).mlp_out.weight, adapter_for(model).layer(1).mlp_out.weight
    cols = [next(j for j in range(w0.shape[1]) if torch.equal(w0[:, j], w1[:, k])) for k in range(w1.shape[1])]
    assert cols == sorted(cols)


def test_refit_follows_dropped_layers():
    original = gqa_model("llama", layers=5)
    ids = calib(n=16)
    plain, fitted = copy.deepcopy(original), copy.deepcopy(original)
    prune(plain, 0.45, data=ids, drop_layers=1, refit=False, **FAST)
    report = prune(fitted, 0.45, data=ids, drop_layers=1, refit=True, refit_damp=0.01, **FAST)
    assert report.dropped_layers and report.refitted == 2 * 4
    assert _output_error(fitted, original, ids) < _output_error(plain, original, ids)


def test_data_free_pruning_skips_the_refit_with_a_note():
    model = gqa_model("llama")
    report = prune(model, 0.3, method="uniform", importance="magnitude", refit=True, progress=False)
    assert report.refitted == 0
    assert any("refit" in note for note in report.skipped)


@pytest.mark.parametrize("field,value", [("refit_damp", 0.0), ("refit_damp", float("nan")), ("refit_damp", True),
                                         ("refit_samples", 0), ("refit", "yes")])
def test_bad_refit_options_are_one_sentence(field, value):
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        PruneConfig(**{field: value})


def test_cli_refuses_a_bad_refit_damp_with_exit_2(tiny_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "compress.cli", "prune", str(tiny_dir), "--refit-damp", "-1", "-o", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "refit_damp" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "o").exists()
