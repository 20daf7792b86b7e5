import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaModel

from compress.arch import UnsupportedModelError, adapter_for, is_causal_lm, supported_families
from tests.tiny import ALL_FAMILIES, CAUSAL_FAMILIES, tiny_config, tiny_model


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_adapter_shapes_match_the_modules(family):
    model = tiny_model(family)
    cfg = tiny_config(family)
    a = adapter_for(model)
    assert a.num_layers == cfg.num_hidden_layers
    assert a.hidden_size == cfg.hidden_size
    assert a.head_dim == cfg.hidden_size // cfg.num_attention_heads == 16
    names = dict(model.named_modules())
    for i in range(a.num_layers):
        part = a.layer(i)
        assert part.module is names[part.name]
        assert part.num_heads == cfg.num_attention_heads
        expected_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        assert part.num_kv_heads == expected_kv
        assert part.q.out_features == part.num_heads * a.head_dim
        assert part.o.in_features == part.num_heads * a.head_dim
        assert part.v.out_features == part.num_kv_heads * a.head_dim
        assert part.mlp_width == cfg.intermediate_size
        assert all(m.out_features == cfg.intermediate_size for m in part.mlp_in)
        assert len(part.mlp_in) == (1 if family.startswith("bert") else 2)
        for norm in part.norms:
            assert norm.weight.shape == (cfg.hidden_size,)
    for name in a.projection_names():
        assert isinstance(names[name], nn.Linear), name
    assert len(a.projection_names()) == a.num_layers * (4 + len(a.spec.mlp_in) + 1)
    assert a.embed.weight.shape == (cfg.vocab_size, cfg.hidden_size)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_tied_embeddings_are_reported(family):
    model = tiny_model(family)
    a = adapter_for(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    expected = head is not None and head.weight is a.embed.weight
    assert a.tied_embeddings == expected
    assert a.describe()["tied_embeddings"] == expected
    if family == "mistral":
        assert not a.tied_embeddings  # built untied on purpose
    if family in ("llama", "qwen2"):
        assert a.tied_embeddings


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_causal_models_have_head_and_final_norm(family):
    a = adapter_for(tiny_model(family))
    assert a.spec.causal and is_causal_lm(a.model)
    assert a.lm_head is not None and a.lm_head.out_features == a.embed.num_embeddings
    assert a.final_norm is not None


def test_encoder_is_not_causal():
    assert not is_causal_lm(tiny_model("bert"))
    assert adapter_for(tiny_model("bert")).lm_head is None


def test_bare_backbone_resolves_without_prefix():
    model = LlamaModel(tiny_config("llama"))
    a = adapter_for(model)
    assert a.prefix == "" and a.num_layers == 2 and a.lm_head is None


def test_head_counts_follow_the_projection_shapes():
    # after pruning a layer's heads the adapter must report the new count
    model = tiny_model("llama")
    a = adapter_for(model)
    part = a.layer(0)
    part.module.self_attn.q_proj = nn.Linear(64, 2 * 16, bias=False)
    part.module.self_attn.k_proj = nn.Linear(64, 1 * 16, bias=False)
    assert a.layer(0).num_heads == 2 and a.layer(0).num_kv_heads == 1
    assert a.describe()["num_heads"] == [2, 4]


def test_unsupported_model_names_class_and_families():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError) as err:
        adapter_for(model)
    msg = str(err.value)
    assert "GPT2LMHeadModel" in msg and "gpt2" in msg
    for fam in ("llama-style", "gemma3", "bert"):
        assert fam in msg
    assert msg.count(".") >= 1 and "\n" not in msg


def test_plain_module_is_rejected():
    with pytest.raises(UnsupportedModelError, match="Sequential is not a transformers model"):
        adapter_for(nn.Sequential(nn.Linear(2, 2)))


def test_supported_families_lists_model_types():
    text = supported_families()
    for t in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "bert"):
        assert t in text


def test_embedding_param_names_cover_tied_head():
    model = tiny_model("llama")
    names = adapter_for(model).embedding_param_names()
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
