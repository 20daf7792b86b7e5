import torch
from transformers.integrations.sdpa_attention import repeat_kv

from compress.arch import adapter_for
from compress.pruning.groups import layer_groups
from compress.sizes import count_parameters
from tests.pruning.helpers import gqa_model


def test_query_heads_are_grouped_as_repeat_kv_pairs_them():
    g = layer_groups(adapter_for(gqa_model("llama", heads=6, kv=3)).layer(0))
    assert (g.num_heads, g.num_kv_heads, g.n_rep, g.head_dim) == (6, 3, 2, 16)
    assert [g.query_heads(i) for i in range(3)] == [[0, 1], [2, 3], [4, 5]]
    # repeat_kv copies kv head j to query heads j*n_rep .. : query head h reads kv head h // n_rep.
    kv_of_query = repeat_kv(torch.arange(3.0).view(1, 3, 1, 1), g.n_rep).flatten().long().tolist()
    assert kv_of_query == [h // g.n_rep for h in range(6)]
    for h, kv in enumerate(kv_of_query):
        assert h in g.query_heads(kv)


def test_group_rows_and_columns():
    g = layer_groups(adapter_for(gqa_model("llama", heads=6, kv=3)).layer(0))
    assert g.kv_rows([1]).tolist() == list(range(16, 32))
    assert g.q_rows([1]).tolist() == list(range(32, 64))  # query heads 2 and 3
    assert g.q_rows([0, 2]).tolist() == list(range(0, 32)) + list(range(64, 96))
    assert g.kv_rows([2, 0]).tolist() == list(range(32, 48)) + list(range(0, 16))


def test_bert_heads_are_their_own_groups():
    g = layer_groups(adapter_for(gqa_model("bert")).layer(0))
    assert (g.num_heads, g.num_kv_heads, g.n_rep) == (4, 4, 1)
    assert g.q_rows([3]).tolist() == g.kv_rows([3]).tolist() == list(range(48, 64))


def test_group_costs_add_up_to_the_projections():
    for family in ("qwen2", "bert"):  # qwen2 has q/k/v biases, BERT biases everywhere
        model = gqa_model(family)
        a = adapter_for(model)
        p = a.layer(0)
        g = layer_groups(p)
        owned = sum(x.numel() for lin in (p.q, p.k, p.v, p.o, *p.mlp_in, p.mlp_out) for x in lin.parameters())
        shared = sum(x.numel() for x in (p.o.bias, p.mlp_out.bias) if x is not None)
        assert g.params(g.mlp_width, g.num_kv_heads) == owned - shared
        assert count_parameters(model)[1] > a.num_layers * (owned - shared)
