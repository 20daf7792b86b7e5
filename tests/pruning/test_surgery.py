import pytest
import torch

from compress.arch import adapter_for
from compress.pruning.groups import layer_groups
from compress.pruning.surgery import (
    HEAD_ATTRS,
    apply_recorded_widths,
    drop_layers,
    prune_attention,
    prune_mlp,
    record_widths,
)
from tests.pruning.helpers import FAMILIES, IDS, assert_generates_with_cache, gqa_model, logits

def zero_out(parts, g, channels, group):
    """Silence MLP channels and one kv group by zeroing only their consumer columns."""
    with torch.no_grad():
        parts.mlp_out.weight[:, channels] = 0
        parts.o.weight[:, g.q_rows([group])] = 0


@pytest.mark.parametrize("family", FAMILIES)
def test_slicing_out_silenced_groups_leaves_the_logits_unchanged(family):
    model = gqa_model(family)
    a = adapter_for(model)
    plan = {0: ([3, 10, 11, 200], 1), 2: (list(range(0, 256, 3)), 0)}
    for i, (channels, group) in plan.items():
        p = a.layer(i)
        zero_out(p, layer_groups(p), channels, group)
    expected = logits(model, IDS)
    for i, (channels, group) in plan.items():
        p = a.layer(i)
        g = layer_groups(p)
        prune_mlp(p, [c for c in range(g.mlp_width) if c not in channels])
        keep = [x for x in range(g.num_kv_heads) if x != group]
        prune_attention(p, g, keep, a.attention_module(i), a.spec.attn_head_attrs)
    assert torch.allclose(logits(model, IDS), expected, atol=1e-5)
    d = a.describe()
    assert d["mlp_width"][0] == 252 and d["mlp_width"][2] == 256 - 86
    for i in range(a.num_layers):
        p, att = a.layer(i), a.attention_module(i)
        n_rep = 1 if family.startswith("bert") else 2
        assert p.num_heads == p.num_kv_heads * n_rep
        assert p.o.in_features == p.q.out_features == p.num_heads * p.head_dim
        for name in a.spec.attn_head_attrs:
            assert getattr(att, name) == HEAD_ATTRS[name](p.num_heads, p.num_kv_heads, p.head_dim)
    if a.spec.causal:
        assert_generates_with_cache(model)


def test_biases_follow_their_rows():
    model = gqa_model("qwen2")  # q/k/v carry biases
    p = adapter_for(model).layer(0)
    g = layer_groups(p)
    q_bias, k_bias = p.q.bias.detach().clone(), p.k.bias.detach().clone()
    prune_attention(p, g, [0, 2], adapter_for(model).attention_module(0), ("num_key_value_groups",))
    assert torch.equal(p.q.bias, q_bias[g.q_rows([0, 2])])
    assert torch.equal(p.k.bias, k_bias[g.kv_rows([0, 2])])
    assert p.q.weight.shape == (64, 96) and p.q.out_features == 64


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_dropping_layers_renumbers_cache_slots_and_config(family):
    mixed = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    model = gqa_model(family, **({"layer_types": mixed} if family == "gemma3" else {}))
    a = adapter_for(model)
    survivors = [a.layers[i] for i in (0, 1, 3)]
    drop_layers(a, [2])
    assert list(a.layers) == survivors
    assert model.config.num_hidden_layers == 3
    assert [a.attention_module(i).layer_idx for i in range(3)] == [0, 1, 2]
    if family == "gemma3":
        assert model.config.layer_types == ["sliding_attention", "full_attention", "full_attention"]
    assert logits(model, IDS).shape == (1, 8, 320)
    assert_generates_with_cache(model)


def test_record_widths_writes_lists_and_keeps_uniform_configs_stock(tmp_path):
    from transformers import AutoModelForCausalLM

    model = gqa_model("llama")
    a = adapter_for(model)
    for i in range(a.num_layers):
        p = a.layer(i)
        g = layer_groups(p)
        prune_mlp(p, range(0, 256, 2))
        prune_attention(p, g, [0, 2], a.attention_module(i), a.spec.attn_head_attrs)
    uniform, notes = record_widths(a, [0, 1, 2, 3])
    assert uniform and notes == []
    assert model.config.compress_layer_widths == {
        "num_attention_heads": [4] * 4,
        "num_key_value_heads": [2] * 4,
        "intermediate_size": [128] * 4,
        "source_layers": [0, 1, 2, 3],
        "uniform": True,
    }
    cfg = model.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (128, 4, 2)
    # A uniform result is a stock model: plain from_pretrained rebuilds it exactly.
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(again, IDS), logits(model, IDS))


def test_record_widths_flags_non_uniform_and_keeps_bert_head_dim():
    model = gqa_model("bert")
    a = adapter_for(model)
    p = a.layer(1)
    prune_attention(p, layer_groups(p), [0, 1], a.attention_module(1), a.spec.attn_head_attrs)
    uniform, notes = record_widths(a, range(4))
    assert not uniform
    assert model.config.compress_layer_widths["num_attention_heads"] == [4, 2, 4, 4]
    assert [n for n in notes if "Layer widths differ" in n]
    for i in (0, 2, 3):
        p = a.layer(i)
        prune_attention(p, layer_groups(p), [0, 1], a.attention_module(i), a.spec.attn_head_attrs)
    uniform, notes = record_widths(a, range(4))
    assert uniform
    # BERT derives head_dim from num_attention_heads, so the config keeps 4 and says why.
    assert model.config.num_attention_heads == 4 and a.head_dim == 16
    assert [n for n in notes if "derives head_dim" in n]
    assert logits(model, IDS).shape == (1, 8, 64)


@pytest.mark.parametrize("family", ["qwen3", "bert-mlm"])
def test_recorded_widths_rebuild_a_non_uniform_model(tmp_path, family):
    """The reload path for compress.load: stock model from the saved config, shrunk, then loaded."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, BertForMaskedLM

    from compress.pruning import prune
    from tests.pruning.helpers import FAST, calib

    model = gqa_model(family)
    report = prune(model, 0.4, data=calib(), drop_layers=1, importance="magnitude", step=0.1, **FAST)
    assert not report.uniform
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    build = BertForMaskedLM if family.startswith("bert") else AutoModelForCausalLM.from_config
    fresh = build(config).eval()
    assert apply_recorded_widths(adapter_for(fresh))
    missing, unexpected = fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    assert not unexpected and all("lm_head" in k or "decoder" in k for k in missing)  # tied head
    fresh.tie_weights()
    assert adapter_for(fresh).describe() == adapter_for(model).describe()
    assert torch.equal(logits(fresh, IDS), logits(model, IDS))
