"""Activation-aware input scales (AWQ): the search on a toy layer, and folding them into tiny models of every family."""
import copy
import dataclasses

import pytest
import torch

from compress.arch import adapter_for
from compress.quantization import QuantConfig
from compress.quantization.quantizers import dequantize, quantize_int4
from compress.quantization.scaling import scale_inputs, scale_pairs, search_scale
from tests.tiny import tiny_model

CFG = QuantConfig(method="int4", group_size=16, symmetric=False, zero_point="float")


def outlier_inputs(n=512, k=64, seed=0):
    """Inputs with a few channels 30x larger than the rest, as LLM activations have."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g)
    x[:, [3, 17, 40]] *= 30.0
    return x


def output_error(w, q, x):
    return float(((x @ (w - q).t()) ** 2).sum())


def test_search_scale_lowers_the_output_error_on_outlier_channels():
    x = outlier_inputs()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    H = x.t() @ x
    s, alpha, err, base = search_scale([w], H, x.abs().mean(dim=0), CFG)
    assert alpha > 0 and err < 0.9 * base
    # the reported errors are the real output errors of round-to-nearest with and without the scale
    rtn = dataclasses.replace(CFG, clip_search=False)
    q_plain = dequantize(quantize_int4(w, rtn))
    q_scaled = dequantize(quantize_int4(w * s, rtn)) / s
    assert output_error(w, q_plain, x) == pytest.approx(base, rel=1e-4)
    assert output_error(w, q_scaled, x) == pytest.approx(err, rel=1e-4)
    assert (s.max() * s.min()).item() == pytest.approx(1.0, rel=1e-4)


def test_search_scale_keeps_one_when_inputs_are_even():
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(2))
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    s, alpha, err, base = search_scale([w], x.t() @ x, torch.ones(64), CFG)
    # every alpha gives s = 1 for equal means: nothing to gain, nothing changed
    assert alpha == 0.0 and torch.equal(s, torch.ones(64)) and err == base


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "gemma3"])
def test_scale_inputs_keeps_the_model_and_lowers_rounding_error(family):
    model = tiny_model(family)
    before = copy.deepcopy(model)
    ids = torch.randint(3, 100, (6, 24), generator=torch.Generator().manual_seed(0))
    records = scale_inputs(adapter_for(model), ids, CFG, batch_size=4, progress=False)
    adapter = adapter_for(model)
    names = {p.name for p in scale_pairs(adapter, 0)}
    assert {"qkv", "mlp_in", "mlp_out"} <= names
    assert len(records) == adapter.num_layers * len(names)
    assert any(r["alpha"] > 0 for r in records)
    assert all(r["error"] <= r["error_unscaled"] for r in records)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before(ids).logits, rtol=1e-4, atol=1e-4)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before.get_parameter(n))]
    assert any("layernorm" in n for n in changed) and any("up_proj" in n for n in changed)


def test_multi_head_attention_scales_o_through_v():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    parts = adapter.layer(0)
    assert parts.num_kv_heads < parts.num_heads  # the tiny config uses GQA: v's rows are shared by heads
    assert "o" not in {p.name for p in scale_pairs(adapter, 0)}
    from tests.tiny import tiny_config
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama")
    cfg.num_key_value_heads = cfg.num_attention_heads
    torch.manual_seed(0)
    mha = AutoModelForCausalLM.from_config(cfg).float().eval()
    before = copy.deepcopy(mha)
    assert "o" in {p.name for p in scale_pairs(adapter_for(mha), 0)}
    ids = torch.randint(3, 100, (4, 16), generator=torch.Generator().manual_seed(1))
    scale_inputs(adapter_for(mha), ids, CFG, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(mha(ids).logits, before(ids).logits, rtol=1e-4, atol=1e-4)


def test_encoders_scale_only_o_through_v():
    """BERT's norms follow their blocks (nothing to fold into) and its MLP is not gated; v feeds o linearly."""
    model = tiny_model("bert")
    before = copy.deepcopy(model)
    ids = torch.randint(3, 100, (4, 16), generator=torch.Generator().manual_seed(2))
    records = scale_inputs(adapter_for(model), ids, CFG, progress=False)
    assert {r["pair"] for r in records} == {"o"}
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, before(ids).last_hidden_state, rtol=1e-4, atol=1e-4)
