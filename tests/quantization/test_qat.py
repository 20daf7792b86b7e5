"""Fake quantisation for QAT: straight-through gradients, the lambda warm-up, conversion to packed form."""
import copy

import pytest
import torch
import torch.nn.functional as F

from compress.errors import ConfigError
from compress.quantization import FakeQuantLinear, QuantConfig, QuantError, QuantLinear, prepare_qat, quantize, set_qat_lambda
from compress.quantization.qat import straight_through
from compress.quantization.quantizers import fake_quantize, fake_quantize_activations
from tests.tiny import tiny_model

IDS = torch.randint(4, 300, (2, 16), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def test_straight_through_value_and_gradient():
    x = torch.randn(5, requires_grad=True)
    q = x.detach().round()
    for lam in (0.0, 0.3, 1.0):
        y = straight_through(x, q, lam)
        assert torch.allclose(y, x + lam * (q - x))
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(g, torch.ones(5))  # identity, whatever lambda
    assert torch.equal(straight_through(x, q, 1.0), q)  # exactly the quantised value
    assert torch.equal(straight_through(x, q, 0.0), x)


@pytest.mark.parametrize("config", ["ternary", "ternary-a8", QuantConfig(group_size=32)])
def test_lambda_zero_is_the_float_model_and_one_is_quantised(config):
    model = tiny_model("llama")
    ref = logits(model)
    report = prepare_qat(model, config, qat_lambda=0.0)
    assert report.mode == "fake-quant" and len(report.modules) == 14
    assert isinstance(model.model.layers[0].mlp.down_proj, FakeQuantLinear)
    assert torch.equal(logits(model), ref)
    assert set_qat_lambda(model, 1.0) == 14
    assert not torch.allclose(logits(model), ref, atol=1e-4)


def test_ste_gradients_flow_to_the_latent_weights():
    model = tiny_model("qwen3")
    prepare_qat(model, "ternary")
    proj = model.model.layers[1].self_attn.q_proj
    latent = proj.weight
    model(IDS, labels=IDS).loss.backward()
    assert latent.requires_grad and latent.grad is not None and latent.grad.abs().sum() > 0
    # one optimiser step moves the latent weights, not their quantised image only
    before = latent.detach().clone()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert not torch.equal(latent.detach(), before)


def test_prepare_qat_reuses_the_original_parameters():
    model = tiny_model("llama")
    weight = model.model.layers[0].self_attn.o_proj.weight
    prepare_qat(model, "ternary")
    assert model.model.layers[0].self_attn.o_proj.weight is weight


@pytest.mark.parametrize(
    "config", ["ternary", "ternary-absmedian", "ternary-a8", QuantConfig(group_size=32, symmetric=False)],
)
def test_qat_model_and_its_packed_conversion_give_the_same_logits(config):
    model = tiny_model("llama")
    prepare_qat(model, config)
    # a little "training" so the latent weights are not the initial ones
    model(IDS, labels=IDS).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    fake = logits(model)
    report = quantize(model)  # no config: convert as trained
    assert report.config == "as trained (QAT)" and len(report.modules) == 14
    assert all(m.label.endswith("qat") for m in report.modules)
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())
    assert isinstance(model.model.layers[0].mlp.up_proj, QuantLinear)
    assert torch.equal(logits(model), fake)  # the same arithmetic: bit-identical


def test_a8_straight_through_gradients_match_the_generic_formula():
    cfg = QuantConfig(method="ternary", activations="a8")
    lin = torch.nn.Linear(32, 8, bias=False)
    w2 = lin.weight.detach().clone().requires_grad_()
    fq = FakeQuantLinear.from_linear(lin, cfg)
    x = torch.randn(3, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    fq(x).pow(2).sum().backward()
    x_eff = straight_through(x2, fake_quantize_activations(x2), 1.0)
    F.linear(x_eff, straight_through(w2, fake_quantize(w2, cfg), 1.0)).pow(2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(lin.weight.grad, w2.grad, atol=1e-5)


def test_converting_during_warm_up_says_so():
    model = tiny_model("llama")
    prepare_qat(model, "ternary", qat_lambda=0.5)
    report = quantize(model)
    assert "lambda < 1" in str(report) and len(report.modules) == 14


def test_converting_with_a_different_quantiser_is_refused():
    model = tiny_model("llama")
    prepare_qat(model, "ternary")
    with pytest.raises(QuantError, match=r"trained as ternary absmean per-tensor a16, asked for int4 g32"):
        quantize(model, QuantConfig(group_size=32))


def test_qat_rejects_gptq_and_bad_lambdas():
    model = tiny_model("llama")
    with pytest.raises(QuantError, match="round-to-nearest"):
        prepare_qat(model, QuantConfig(group_size=32, gptq=True))
    with pytest.raises(ConfigError, match="between 0 and 1"):
        set_qat_lambda(model, 1.5)


def test_fake_quant_weight_matches_the_quantiser():
    lin = torch.nn.Linear(32, 8)
    cfg = QuantConfig(method="ternary", scale="absmedian")
    fq = FakeQuantLinear.from_linear(copy.deepcopy(lin), cfg)
    x = torch.randn(3, 32)
    want = x @ fake_quantize(lin.weight, cfg).t() + lin.bias
    assert torch.allclose(fq(x), want, atol=1e-6)
    assert "fake-quant ternary absmedian" in repr(fq)
