"""Packed modules are recognised by type (compress.packed), not by their buffer names."""
import pytest
import torch
from torch import nn

from compress.io.exports.common import quantized_modules
from compress.io.storage import packed_names
from compress.packed import PACKED_KINDS, PackedModule, is_packed
from compress.quantization import QuantConfig, quantize
from compress.quantization.embedding import QuantEmbedding, TiedQuantHead
from compress.quantization.linear import QuantLinear
from tests.tiny import tiny_model


def test_each_packed_module_has_its_kind():
    linear = QuantLinear(32, 8, method="int4", group_size=16)
    ternary = QuantLinear(32, 8, method="ternary")
    embed = QuantEmbedding(10, 32, bits=8)
    head = TiedQuantHead(embed)
    assert [m.kind for m in (linear, ternary, embed, head)] == ["linear", "linear", "embedding", "tied_head"]
    for m in (linear, ternary, embed, head):
        assert isinstance(m, PackedModule) and is_packed(m) and is_packed(m, m.kind)
        assert not any(is_packed(m, k) for k in PACKED_KINDS if k != m.kind)


def test_float_modules_and_look_alikes_are_not_packed():
    class LooksPacked(nn.Module):  # the buffer names alone no longer make a module packed
        def __init__(self):
            super().__init__()
            self.register_buffer("qweight", torch.zeros(2, 2, dtype=torch.int32))
            self.register_buffer("qdata", torch.zeros(2, 2, dtype=torch.int8))

        def describe(self):
            return {}

    for m in (nn.Linear(4, 4), nn.Embedding(4, 4), LooksPacked(), None, "qweight"):
        assert not is_packed(m) and not is_packed(m, "linear") and not is_packed(m, "embedding")
    model = nn.Sequential(LooksPacked())
    assert quantized_modules(model) == {} and packed_names(model) == set()


def test_an_unknown_kind_is_one_sentence():
    with pytest.raises(ValueError, match=r"^unknown packed module kind 'qweight'; use one of linear, embedding, "
                                         r"tied_head or None for any\.$"):
        is_packed(nn.Linear(2, 2), "qweight")


def test_a_quantised_model_lists_its_packed_modules_by_kind():
    model = tiny_model("llama")
    quantize(model, QuantConfig(group_size=32, embeddings="int8", progress=False))
    kinds = {n: m.kind for n, m in model.named_modules() if is_packed(m)}
    assert kinds["model.embed_tokens"] == "embedding" and kinds["lm_head"] == "tied_head"
    linears = [n for n, k in kinds.items() if k == "linear"]
    assert len(linears) == 2 * 7 and list(quantized_modules(model)) == linears
    assert "model.embed_tokens.scales" in packed_names(model) and f"{linears[0]}.zeros" in packed_names(model)
