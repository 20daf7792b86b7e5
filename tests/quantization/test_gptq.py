"""GPTQ: the math on a correlated toy problem, and the layer-by-layer driver on a tiny model."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from compress.quantization import QuantConfig, QuantError, quantize
from compress.quantization.gptq import accumulate_drift, accumulate_hessian, gptq_quantize
from compress.quantization.quantizers import dequantize, quantize_int4
from tests.tiny import tiny_model


def correlated_inputs(n=2048, k=128, seed=0):
    """Inputs whose features are strongly correlated (a low-rank mix plus noise, uneven scales)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 16, generator=g)
    mix = torch.randn(16, k, generator=g)
    return (z @ mix + 0.1 * torch.randn(n, k, generator=g)) * torch.linspace(0.2, 2.0, k)


def hessian(x):
    H = torch.zeros(x.shape[1], x.shape[1])
    count = 0
    for chunk in x.split(300):  # uneven chunks: the running average must not depend on them
        count = accumulate_hessian(H, count, chunk)
    return H, count


def test_accumulated_hessian_is_2_over_n_xtx():
    x = correlated_inputs(n=700, k=32)
    H, count = hessian(x)
    assert count == 700
    assert torch.allclose(H, 2.0 / 700 * x.t() @ x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [7, 300, 700])
def test_the_inverse_factor_and_gptaqs_drift_term_match_their_dense_definitions(k):
    """_inverse_cholesky: upper U with U^T U = (damped H)^-1; _drift_term: triu(D U^T, 1) U computed by blocks."""
    from compress.quantization.gptq import _drift_term, _inverse_cholesky

    gen = torch.Generator().manual_seed(k)
    x = torch.randn(2 * k, k, generator=gen, dtype=torch.float64)
    H = x.t() @ x / (2 * k)
    damped = H + 0.01 * H.diagonal().mean() * torch.eye(k, dtype=torch.float64)
    U = _inverse_cholesky(H.clone(), 0.01)
    assert torch.equal(U, U.triu()) and (U.diagonal() > 0).all()
    torch.testing.assert_close(U.t() @ U, torch.linalg.inv(damped), rtol=1e-8, atol=1e-8)
    D = torch.randn(k, k, generator=gen, dtype=torch.float64)
    P = _drift_term(D, U, block=128)
    torch.testing.assert_close(P, (D @ U.t()).triu(diagonal=1) @ U, rtol=1e-10, atol=1e-10)
    assert torch.equal(P, P.triu(diagonal=1))


@pytest.mark.parametrize("k", [32, 400, 1000])
def test_the_input_product_is_the_gram_matrix_and_exactly_symmetric(k):
    """Wide inputs compute only the upper block triangle of x^T x and mirror it."""
    from compress.quantization.gptq import input_product

    x = torch.randn(3, 50, k, generator=torch.Generator().manual_seed(k))
    product, rows = input_product(x)
    flat = x.reshape(-1, k)
    assert rows == 150
    assert torch.allclose(product, flat.t() @ flat, rtol=1e-5, atol=1e-4)
    assert torch.equal(product, product.t())


@pytest.mark.parametrize(
    "cfg",
    [
        QuantConfig(group_size=32, gptq=True),
        QuantConfig(group_size=32, gptq=True, symmetric=False),
        QuantConfig(group_size=32, gptq=True, symmetric=False, zero_point="float"),
        QuantConfig(group_size=-1, gptq=True),
        QuantConfig(group_size=32, gptq=True, act_order=True),
        QuantConfig(group_size=64, gptq=True, block_size=16),
    ],
    ids=["g32", "g32-asym", "g32-float-zero", "per-channel", "act-order", "small-blocks"],
)
def test_gptq_beats_rtn_on_layer_output_error(cfg):
    torch.manual_seed(0)
    x = correlated_inputs()
    w = torch.randn(48, 128) * 0.05
    H, _ = hessian(x)
    out = x @ w.t()
    rtn_err = (x @ dequantize(quantize_int4(w, cfg)).t() - out).pow(2).mean()
    q = gptq_quantize(w, H, cfg)
    gptq_err = (x @ dequantize(q).t() - out).pow(2).mean()
    assert q.codes.shape == (48, 128) and int(q.codes.max()) <= 15
    assert gptq_err < 0.5 * rtn_err, (gptq_err, rtn_err)


@pytest.mark.parametrize(
    "cfg",
    [QuantConfig(group_size=16), QuantConfig(group_size=32, symmetric=False),
     QuantConfig(group_size=32, symmetric=False, zero_point="float"), QuantConfig(group_size=-1)],
)
def test_gptq_with_identity_hessian_is_round_to_nearest(cfg):
    # no correlation between inputs: there is nothing to compensate, so the codes equal RTN's exactly
    # (and so do the scales without the group refit, which test_group_refit.py covers)
    torch.manual_seed(1)
    w = torch.randn(12, 64)
    cfg = dataclasses.replace(cfg, group_refit=False)
    q, rtn = gptq_quantize(w, torch.eye(64), cfg), quantize_int4(w, cfg)
    assert torch.equal(q.codes, rtn.codes)
    assert torch.equal(q.scales, rtn.scales)
    assert (q.zeros is None and rtn.zeros is None) or torch.equal(q.zeros, rtn.zeros)


def test_gptq_zeroes_dead_inputs_and_rejects_a_broken_hessian():
    w = torch.randn(4, 32)
    H = torch.eye(32)
    H[5, 5] = 0.0  # an input that was always zero
    q = gptq_quantize(w, H, QuantConfig(group_size=16, symmetric=False))
    assert dequantize(q)[:, 5].abs().max() < 1e-6
    with pytest.raises(QuantError, match="not positive definite"):
        gptq_quantize(w, -torch.eye(32), QuantConfig(group_size=16))


def _tiny_with_reference(family):
    """A tiny model, fixed calibration ids, and its logits on them."""
    base = tiny_model(family)
    ids = torch.randint(4, 300, (16, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return base, ids, base(ids).logits


def _kl(model, ids, ref):
    with torch.no_grad():
        out = model(ids).logits
    return F.kl_div(out.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean").item()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_gptq_beats_rtn_on_a_tiny_models_calibration_loss(family):
    base, ids, ref = _tiny_with_reference(family)
    rtn, gptq = copy.deepcopy(base), copy.deepcopy(base)
    quantize(rtn, QuantConfig(group_size=32, progress=False))
    report = quantize(gptq, QuantConfig(group_size=32, gptq=True, progress=False), data=ids)
    assert len(report.modules) == 14 and all(m.label.endswith("gptq") for m in report.modules)
    assert _kl(gptq, ids, ref) < 0.8 * _kl(rtn, ids, ref)


def test_gptq_without_calibration_data_is_a_clear_error(llama):
    with pytest.raises(QuantError, match="GPTQ needs calibration data"):
        quantize(llama, QuantConfig(group_size=32, gptq=True))
    with pytest.raises(QuantError, match=r"integer tensor \[n, seq_len\]"):
        quantize(llama, QuantConfig(group_size=32, gptq=True), data=torch.randn(4, 8))
    assert isinstance(llama.model.layers[0].self_attn.q_proj, torch.nn.Linear)  # nothing was touched


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_handles_a_partial_last_group(act_order):
    x = correlated_inputs(n=1024, k=96)
    w = torch.randn(16, 96) * 0.05
    H, _ = hessian(x)
    cfg = QuantConfig(group_size=64, gptq=True, act_order=act_order)
    q = gptq_quantize(w, H, cfg)
    assert q.scales.shape == (2, 16)
    identity = gptq_quantize(w, torch.eye(96), QuantConfig(group_size=64, act_order=act_order, group_refit=False))
    rtn = quantize_int4(w, cfg)
    assert torch.equal(identity.codes, rtn.codes) and torch.equal(identity.scales, rtn.scales)
    # the partial group's scale comes from its 32 real columns only (min-max range: without the clip search)
    minmax = quantize_int4(w, QuantConfig(group_size=64, clip_search=False))
    assert torch.allclose(minmax.scales[1].float(), w[:, 64:].abs().amax(1) / 7.5, rtol=1e-3)
    rtn_err = (x @ dequantize(quantize_int4(w, cfg)).t() - x @ w.t()).pow(2).mean()
    assert (x @ dequantize(q).t() - x @ w.t()).pow(2).mean() < 0.5 * rtn_err


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_stage_passes_stop_early_with_the_same_hessians(family):
    from compress.arch import adapter_for
    from compress.quantization.calibrate import _input_statistics, _stages, capture_layer_calls
    from compress.quantization.plan import make_plan

    model = tiny_model(family)
    adapter = adapter_for(model)
    batches = list(torch.randint(4, 300, (6, 16), generator=torch.Generator().manual_seed(1)).split(2))
    hidden, calls = capture_layer_calls(adapter, batches)
    prefix = adapter.layer_name(0) + "."
    targets = [t for t in make_plan(model, QuantConfig(group_size=32, gptq=True)).targets if t.name.startswith(prefix)]
    layer, parts = adapter.layers[0], adapter.layer(0)
    ran = []
    handle = parts.mlp_out.register_forward_pre_hook(lambda m, a: ran.append(1))
    stages = _stages(adapter, 0, targets, true_sequential=True)
    assert [len(s) for s in stages] == ([3, 1, 2, 1] if family == "llama" else [3, 1, 1, 1])
    for stage in stages:
        ran.clear()
        full, _ = _input_statistics(layer, stage, hidden, calls[0], stop_early=False)
        assert len(ran) == len(batches)  # the whole layer ran once per batch
        ran.clear()
        early, _ = _input_statistics(layer, stage, hidden, calls[0])
        assert len(ran) == (len(batches) if stage[0].module is parts.mlp_out else 0)  # ... and now stopped before
        assert full.keys() == early.keys() == {t.name for t in stage}
        for name in full:
            assert torch.equal(full[name], early[name])
    handle.remove()


def test_gptq_reads_at_most_calibration_sequences_and_says_so():
    ids = torch.randint(4, 300, (6, 16), generator=torch.Generator().manual_seed(2))
    capped, first = tiny_model("llama"), tiny_model("llama")
    report = quantize(capped, QuantConfig(group_size=32, gptq=True, calibration_sequences=2, progress=False), data=ids)
    assert "GPTQ calibrated on the first 2 of 6 calibration sequences" in str(report)
    quantize(first, QuantConfig(group_size=32, gptq=True, progress=False), data=ids[:2])
    assert torch.equal(capped.model.layers[1].mlp.down_proj.qweight, first.model.layers[1].mlp.down_proj.qweight)
    everything = tiny_model("llama")
    report = quantize(everything, QuantConfig(group_size=32, gptq=True, calibration_sequences=None, progress=False), data=ids)
    assert "calibrated on the first" not in str(report)
    assert not torch.equal(everything.model.layers[1].mlp.down_proj.qweight, first.model.layers[1].mlp.down_proj.qweight)


def test_gptaq_math_with_no_drift_or_alpha_0_is_plain_gptq():
    x = correlated_inputs(n=1024, k=128)
    w = torch.randn(24, 128) * 0.05
    H, _ = hessian(x)
    cfg = QuantConfig(group_size=32, gptq=True, gptaq=False)
    plain = gptq_quantize(w, H, cfg)
    drift = torch.randn(128, 128) * 0.1
    assert torch.equal(gptq_quantize(w, H, cfg, drift=torch.zeros(128, 128)).codes, plain.codes)
    off = QuantConfig(group_size=32, gptq=True, gptaq=True, gptaq_alpha=0.0)
    assert torch.equal(gptq_quantize(w, H, off, drift=drift).codes, plain.codes)
    on = QuantConfig(group_size=32, gptq=True, gptaq=True)
    assert not torch.equal(gptq_quantize(w, H, on, drift=drift).codes, plain.codes)


def test_gptaq_targets_the_original_inputs():
    """Quantised inputs that drifted from the original ones: GPTAQ's output error against W x_fp beats GPTQ's."""
    from compress.quantization.gptq import accumulate_drift

    x_fp = correlated_inputs(n=2048, k=128)
    x = x_fp + 0.3 * correlated_inputs(n=2048, k=128, seed=1)  # the drift earlier layers' rounding caused
    w = torch.randn(32, 128) * 0.05
    H, _ = hessian(x)
    drift, count = torch.zeros(128, 128), 0
    for a, b in zip(x_fp.split(300), x.split(300)):
        count = accumulate_drift(drift, count, a, b)
    assert count == 2048
    assert torch.allclose(drift, 2 / 2048 * (x_fp - x).t() @ x, rtol=1e-4, atol=1e-4)
    target = x_fp @ w.t()
    errors = {}
    for alpha in (0.0, 0.25, 1.0):
        cfg = QuantConfig(group_size=32, gptq=True, gptaq=True, gptaq_alpha=alpha)
        errors[alpha] = (x @ dequantize(gptq_quantize(w, H, cfg, drift=drift)).t() - target).pow(2).mean().item()
    assert errors[0.25] < errors[0.0] and errors[1.0] < errors[0.25]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_gptaq_on_a_tiny_model_matches_the_original_at_least_as_well_as_gptq(family):
    base, ids, ref = _tiny_with_reference(family)
    gptq, gptaq = copy.deepcopy(base), copy.deepcopy(base)
    quantize(gptq, QuantConfig(group_size=32, gptq=True, gptaq=False, progress=False), data=ids)
    report = quantize(gptaq, QuantConfig(group_size=32, gptq=True, progress=False), data=ids)  # GPTAQ by default
    assert len(report.modules) == 14
    assert _kl(gptaq, ids, ref) < _kl(gptq, ids, ref)


def test_gptaq_alpha_must_be_sane():
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match="gptaq_alpha must be between 0 and 1"):
        QuantConfig(gptq=True, gptaq_alpha=2.0)


class _RunEveryPass:
    """Stands in for calibrate._BlockMemo: no outputs kept, every pass runs every block."""

    def __init__(self, layer, names, final=False, tails=None, stash_bytes=None):
        self.batch, self.recording, self.needed, self.final = 0, True, set(), set()

    def stash_input(self, module, x):
        pass

    def close(self):
        pass


def _packed_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "gemma3", "bert-mlm"])
def test_memoised_passes_quantise_exactly_as_running_every_pass(family, monkeypatch):
    """Attention / MLP outputs reused across a layer's stage passes change nothing, and save work."""
    from compress.arch import adapter_for
    from compress.quantization import calibrate

    base, ids, _ = _tiny_with_reference(family)
    cfg = QuantConfig(group_size=32, gptq=True, progress=False)  # GPTAQ: both streams
    runs = {}
    for name, memo_class in (("memo", calibrate._BlockMemo), ("every pass", _RunEveryPass)):
        model = copy.deepcopy(base)
        q_calls = []
        handles = [adapter_for(model).layer(i).q.register_forward_pre_hook(lambda m, a: q_calls.append(1))
                   for i in range(adapter_for(model).num_layers)]
        monkeypatch.setattr(calibrate, "_BlockMemo", memo_class)
        quantize(model, cfg, data=ids)
        for h in handles:
            h.remove()
        runs[name] = (_packed_state(model), len(q_calls))
    (memo_state, memo_calls), (every_state, every_calls) = runs["memo"], runs["every pass"]
    assert memo_state.keys() == every_state.keys()
    for key in memo_state:
        assert torch.equal(memo_state[key], every_state[key]), key
    assert memo_calls < every_calls


def _quantised_counting_linear_calls(base, ids, cfg, monkeypatch):
    """A copy of ``base`` GPTQ-quantised on ``ids``: its packed state and how many nn.Linear forwards ran."""
    from torch import nn

    real_forward, calls = nn.Linear.forward, [0]

    def counting(self, x):
        calls[0] += 1
        return real_forward(self, x)

    monkeypatch.setattr(nn.Linear, "forward", counting)
    model = copy.deepcopy(base)
    quantize(model, cfg, data=ids)
    monkeypatch.setattr(nn.Linear, "forward", real_forward)
    return _packed_state(model), calls[0]


@pytest.mark.parametrize("family", ["llama", "gemma3", "bert-mlm"])
def test_blocks_computed_from_their_last_modules_kept_input_change_nothing(family, monkeypatch):
    """Once o_proj / down_proj are quantised, attention's / the MLP's output is that module applied to the input
    its statistics pass kept: same codes, fewer matmuls (BERT's blocks add a residual and LayerNorm: checked,
    then run as before)."""
    from compress.quantization import calibrate

    base, ids, _ = _tiny_with_reference(family)
    cfg = QuantConfig(group_size=32, gptq=True, progress=False)
    real_tails = calibrate._tails
    runs = {}
    for name, tails in (("tails", real_tails), ("none", lambda *a: {})):
        monkeypatch.setattr(calibrate, "_tails", tails)
        runs[name] = _quantised_counting_linear_calls(base, ids, cfg, monkeypatch)
    (kept, kept_calls), (none, none_calls) = runs["tails"], runs["none"]
    for key in kept:
        assert torch.equal(kept[key], none[key]), key
    if family != "bert-mlm":
        assert kept_calls < none_calls
    else:
        assert kept_calls == none_calls


def test_kept_tail_inputs_stay_within_their_byte_limit(monkeypatch):
    """STASH_PER_HIDDEN bounds the kept o_proj / down_proj inputs; batches beyond it run the block for real."""
    from compress.quantization import calibrate

    base, ids, _ = _tiny_with_reference("llama")
    cfg = QuantConfig(group_size=32, gptq=True, progress=False)
    real_stash = calibrate._BlockMemo.stash_input
    runs, most = {}, [0]

    def stash_input(self, module, x):
        real_stash(self, module, x)
        most[0] = max(most[0], sum(v.nbytes for v in self._stash.values()))

    monkeypatch.setattr(calibrate._BlockMemo, "stash_input", stash_input)
    for limit in (0.0, 0.6, 100.0):
        most[0] = 0
        monkeypatch.setattr(calibrate, "STASH_PER_HIDDEN", limit)
        runs[limit] = _quantised_counting_linear_calls(base, ids, cfg, monkeypatch)
        hidden_bytes = ids.numel() * base.config.hidden_size * 4
        assert most[0] <= limit * hidden_bytes
    for key in runs[0.0][0]:
        assert torch.equal(runs[0.0][0][key], runs[0.6][0][key]) and torch.equal(runs[0.0][0][key], runs[100.0][0][key])
    assert runs[100.0][1] < runs[0.6][1] < runs[0.0][1]


def test_a_memo_that_disagrees_with_a_real_run_is_turned_off(monkeypatch):
    """The first reuse of each kept output is checked; wrong ones (here: shifted by 1) are dropped, results unchanged."""
    from compress.quantization import calibrate

    base, ids, _ = _tiny_with_reference("llama")
    cfg = QuantConfig(group_size=32, gptq=True, progress=False)
    memo_class, real_cloned = calibrate._BlockMemo, calibrate._cloned
    reference = copy.deepcopy(base)
    monkeypatch.setattr(calibrate, "_BlockMemo", _RunEveryPass)
    quantize(reference, cfg, data=ids)

    def shifted(out):  # every tensor kept is off by one
        return real_cloned(out) + 1.0 if isinstance(out, torch.Tensor) else real_cloned(out)

    monkeypatch.setattr(calibrate, "_BlockMemo", memo_class)
    monkeypatch.setattr(calibrate, "_cloned", shifted)
    model = copy.deepcopy(base)
    quantize(model, cfg, data=ids)
    ref_state, state = _packed_state(reference), _packed_state(model)
    for key in ref_state:
        assert torch.equal(ref_state[key], state[key]), key


def test_a_prepared_hessian_is_refused_for_other_settings():
    from compress.quantization.gptq import prepare_hessian

    x = correlated_inputs(k=64)
    H = torch.zeros(64, 64)
    accumulate_hessian(H, 0, x)
    w = torch.randn(8, 64)
    cfg = QuantConfig(group_size=32, gptq=True)
    prepared = prepare_hessian(H, cfg)
    assert torch.equal(gptq_quantize(w, None, cfg, prepared=prepared).codes, gptq_quantize(w, H, cfg).codes)
    with pytest.raises(ValueError, match="other damping"):
        gptq_quantize(w, None, QuantConfig(group_size=32, gptq=True, damp=0.1), prepared=prepared)


def test_modules_sharing_an_input_get_the_hessian_of_their_own_inputs():
    """q/k/v (and gate/up) are recorded together after the first batch; each still gets exactly its inputs' H."""
    from compress.arch import adapter_for
    from compress.quantization.calibrate import _input_statistics, _stages, capture_layer_calls
    from compress.quantization.gptq import accumulate_hessian
    from compress.quantization.plan import make_plan

    model = tiny_model("llama")
    adapter = adapter_for(model)
    batches = list(torch.randint(4, 300, (8, 16), generator=torch.Generator().manual_seed(3)).split(2))
    hidden, calls = capture_layer_calls(adapter, batches)
    prefix = adapter.layer_name(0) + "."
    targets = [t for t in make_plan(model, QuantConfig(group_size=32, gptq=True)).targets if t.name.startswith(prefix)]
    layer = adapter.layers[0]
    for stage in _stages(adapter, 0, targets, true_sequential=True):
        expected = {}
        for t in stage:
            H, count = torch.zeros(t.module.in_features, t.module.in_features), [0]

            def add(m, args, H=H, count=count):
                count[0] = accumulate_hessian(H, count[0], args[0])

            handle = t.module.register_forward_pre_hook(add)
            with torch.no_grad():
                for h, call in zip(hidden, calls[0]):
                    call.run(layer, h)
            handle.remove()
            expected[t.name] = H
        got, _ = _input_statistics(layer, stage, hidden, calls[0])
        for name, H in expected.items():
            assert torch.allclose(got[name], H, rtol=1e-5, atol=1e-6), name


def test_the_originals_last_pass_moves_its_hidden_states_on_with_the_same_statistics():
    """GPTAQ's last stage runs the original layer to its end and keeps its output as the next layer's input."""
    from compress.arch import adapter_for
    from compress.quantization.calibrate import _input_statistics, _stages, capture_layer_calls
    from compress.quantization.plan import make_plan

    model = tiny_model("llama")
    adapter = adapter_for(model)
    batches = list(torch.randint(4, 300, (6, 16), generator=torch.Generator().manual_seed(4)).split(2))
    hidden, calls = capture_layer_calls(adapter, batches)
    layer = adapter.layers[0]
    original = copy.deepcopy(layer)
    with torch.no_grad():  # the layer as if its earlier stages were quantised: the two streams differ
        layer.mlp.gate_proj.weight.add_(0.05 * torch.randn_like(layer.mlp.gate_proj.weight))
        fp_hidden = [h + 0.01 * torch.randn_like(h) for h in hidden]
    prefix = adapter.layer_name(0) + "."
    targets = [t for t in make_plan(model, QuantConfig(group_size=32, gptq=True)).targets if t.name.startswith(prefix)]
    last = _stages(adapter, 0, targets, true_sequential=True)[-1]
    kept = [h.clone() for h in fp_hidden]
    H, D = _input_statistics(layer, last, hidden, calls[0], original=original, fp_hidden=fp_hidden)
    assert all(torch.equal(a, b) for a, b in zip(kept, fp_hidden))  # untouched without fp_advance
    with torch.no_grad():
        expected = [call.run(original, h) for h, call in zip(fp_hidden, calls[0])]
    H2, D2 = _input_statistics(layer, last, hidden, calls[0], original=original, fp_hidden=fp_hidden, fp_advance=True)
    for name in H:
        assert torch.equal(H[name], H2[name]) and torch.equal(D[name], D2[name])
        assert D[name].abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(expected, fp_hidden))


@pytest.mark.parametrize("symmetric", [True, False])
def test_modules_sharing_a_hessian_quantised_together_get_the_codes_each_would_get_alone(symmetric):
    """q/k/v (gate/up) stacked row-wise run one column loop; each gets exactly its own GPTQ result back."""
    from torch import nn

    from compress.quantization.calibrate import _joint_groups, _quantise_jointly
    from compress.quantization.gptq import prepare_hessian
    from compress.quantization.plan import Target

    x = correlated_inputs(k=64)
    H, D = torch.zeros(64, 64), torch.zeros(64, 64)
    accumulate_hessian(H, 0, x)
    accumulate_drift(D, 0, x + 0.05 * torch.randn_like(x), x)
    cfg = QuantConfig(group_size=32, gptq=True, symmetric=symmetric, zero_point="float" if not symmetric else "integer")
    torch.manual_seed(0)
    targets = [Target(name, nn.Linear(64, rows, bias=False), cfg) for name, rows in (("q", 24), ("k", 8), ("v", 8))]
    targets.append(Target("other", nn.Linear(64, 8, bias=False), QuantConfig(group_size=16, gptq=True)))
    lead_of = {t.name: "q" for t in targets}
    groups = _joint_groups(targets, lead_of)
    assert [[t.name for t in g] for g in groups] == [["q", "k", "v"], ["other"]]  # other settings: alone
    prepared = prepare_hessian(H, cfg, drift=D)
    joint = _quantise_jointly(groups[0], prepared)
    for t in groups[0]:
        alone = gptq_quantize(t.module.weight, None, cfg, prepared=prepared)
        assert torch.equal(joint[t.name].codes, alone.codes), t.name
        assert torch.equal(joint[t.name].scales, alone.scales), t.name
        assert (joint[t.name].zeros is None) == symmetric
        assert symmetric or torch.equal(joint[t.name].zeros, alone.zeros), t.name


def test_bfloat16_calibration_forwards_keep_the_statistics_in_float32_and_the_error_level():
    from compress.quantization import QuantConfig, quantize
    from compress.quantization.gptq import input_product
    from tests.tiny import tiny_model

    x = torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        product, rows = input_product(x)
    assert product.dtype == torch.float32 and torch.allclose(product, x.t() @ x, rtol=1e-5, atol=1e-4)
    data = torch.randint(3, 300, (8, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = tiny_model("llama")(input_ids=data).logits
    codes, error = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = tiny_model("llama")
        quantize(model, QuantConfig(method="int4", group_size=32, gptq=True, calibration_dtype=dtype, progress=False),
                 data=data)
        codes[dtype] = torch.cat([m.qweight.flatten() for n, m in sorted(model.named_modules())
                                  if hasattr(m, "qweight") and n.startswith("model.layers")])
        with torch.no_grad():
            error[dtype] = float((model(input_ids=data).logits - reference).pow(2).mean())
    assert not torch.equal(codes["float32"], codes["bfloat16"])  # the bf16 forwards ran
    assert error["bfloat16"] < 1.5 * error["float32"]  # and GPTQ's result is about as good


@pytest.mark.parametrize("drift", [False, True])
def test_bfloat16_input_products_round_the_inputs_and_return_float32(drift):
    from compress.quantization.gptq import input_product

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 400, generator=gen)  # K = 400: the blocked Gram path
    x_fp = x + 0.1 * torch.randn(x.shape, generator=gen) if drift else None
    product, rows = input_product(x, x_fp, torch.bfloat16)
    flat = x.reshape(-1, 400)
    left = flat if x_fp is None else x_fp.reshape(-1, 400) - flat
    exact = left.t() @ flat
    rounded = left.bfloat16().float().t() @ flat.bfloat16().float()
    assert rows == 256 and product.dtype == torch.float32
    assert drift or torch.equal(product, product.t())  # the Gram matrix stays exactly symmetric
    scale = exact.abs().max()
    assert (product - rounded).abs().max() < 0.02 * scale  # bf16 inputs, bf16-rounded output
    assert (product - exact).abs().max() < 0.03 * scale
    assert not torch.equal(product, exact)  # it did round


def test_auto_calibration_dtype_is_bfloat16_only_where_bf16_is_native(monkeypatch):
    from compress import machine
    from compress.quantization import QuantConfig

    cfg = QuantConfig(method="int4", gptq=True)
    assert cfg.calibration_dtype == "auto"
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(machine, "cpu_bf16", lambda native=native: native)
        assert cfg.calibration_torch_dtype(torch.device("cpu")) == dtype
    pinned = QuantConfig(method="int4", gptq=True, calibration_dtype="float32")
    assert pinned.calibration_torch_dtype(torch.device("cpu")) == torch.float32


def test_an_unknown_calibration_dtype_is_one_sentence():
    from compress.errors import ConfigError
    from compress.quantization import QuantConfig

    with pytest.raises(ConfigError, match="calibration_dtype must be one of 'auto', 'float32', 'bfloat16', got 'float16'"):
        QuantConfig(method="int4", gptq=True, calibration_dtype="float16")
