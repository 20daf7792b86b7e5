import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from compress.arch import UnsupportedModelError, adapter_for
from compress.errors import CompressError
from compress.pruning import PruneConfig, PruneReport, prune
from compress.pruning.groups import layer_groups
from compress.sizes import count_parameters
from tests.pruning.helpers import FAMILIES, FAST, IDS, assert_generates_with_cache, calib, gqa_model, logits


def one_step(model, round_to=8):
    """The most parameters one layer can lose at once: a block of round_to channels plus a kv group."""
    g = layer_groups(adapter_for(model).layer(0))
    return round_to * g.mlp_channel_params + g.kv_group_params


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_prunes_to_half_and_still_runs(family):
    model = gqa_model(family)
    tied = adapter_for(model).tied_embeddings
    step = one_step(model)
    _, before = count_parameters(model)
    importance = "activation" if family == "bert" else "taylor"  # a bare encoder has no loss
    report = prune(model, 0.5, data=calib(), importance=importance, step=0.25, **FAST)
    _, after = count_parameters(model)
    target = before * 0.5
    assert after == report.non_embedding_after
    assert target - step < after <= target
    a = adapter_for(model)
    assert a.tied_embeddings == tied
    for i in range(a.num_layers):
        p = a.layer(i)
        assert p.num_kv_heads >= 1 and p.mlp_width >= 8
        assert p.mlp_width % 8 == 0
        assert p.num_heads == p.num_kv_heads * (1 if family.startswith("bert") else 2)
        for name in a.spec.attn_head_attrs:
            if name == "num_key_value_groups":
                assert a.attention_module(i).num_key_value_groups == p.num_heads // p.num_kv_heads
    widths = model.config.compress_layer_widths
    assert widths["intermediate_size"] == a.describe()["mlp_width"]
    assert widths["num_key_value_heads"] == a.describe()["num_kv_heads"]
    assert widths["uniform"] == report.uniform
    assert torch.isfinite(logits(model, IDS)).all()
    if a.spec.causal:
        assert_generates_with_cache(model)


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "activation"])
def test_prune_removes_exactly_the_silenced_groups(importance):
    """Zeroed groups score lowest under every importance; removing them leaves the logits unchanged."""
    model = gqa_model("llama")
    a = adapter_for(model)
    g = layer_groups(a.layer(0))
    torch.manual_seed(3)
    with torch.no_grad():
        for i in range(a.num_layers):
            p = a.layer(i)
            channels = torch.randperm(256)[:88]
            for lin in p.mlp_in:
                lin.weight[channels] = 0
            p.mlp_out.weight[:, channels] = 0
            group = i % 3
            for lin, rows in ((p.q, g.q_rows([group])), (p.k, g.kv_rows([group])), (p.v, g.kv_rows([group]))):
                lin.weight[rows] = 0
            p.o.weight[:, g.q_rows([group])] = 0
    expected = logits(model, IDS)
    _, before = count_parameters(model)
    removed = a.num_layers * (88 * g.mlp_channel_params + g.kv_group_params)
    # uniform s = 1/3 keeps 168 channels and 2 of 3 kv groups in every layer
    sparsity = (removed - 0.5) / before
    report = prune(model, sparsity, data=calib(), method="uniform", importance=importance, step=0.5, **FAST)
    assert report.non_embedding_after == before - removed
    assert a.describe()["mlp_width"] == [168] * 4 and a.describe()["num_kv_heads"] == [2] * 4
    assert torch.allclose(logits(model, IDS), expected, atol=1e-5)


def test_uniform_magnitude_needs_no_data_and_respects_round_to():
    model = gqa_model("llama", inter=200)
    report = prune(model, 0.3, method="uniform", importance="magnitude", round_to=16, progress=False)
    widths = adapter_for(model).describe()["mlp_width"]
    assert len(set(widths)) == 1 and widths[0] % 16 == 0 and widths[0] < 200
    assert report.uniform and report.calibration_tokens == 0
    assert model.config.intermediate_size == widths[0]
    target = report.non_embedding_before * 0.7
    assert target - 4 * one_step(model, 16) < report.non_embedding_after <= target


def test_adapt_prunes_the_layer_that_changes_its_input_least_the_most():
    model = gqa_model("llama")
    a = adapter_for(model)
    with torch.no_grad():  # layer 2 becomes nearly the identity: cos(in, out) ~ 1, least important
        a.layer(2).o.weight.mul_(1e-3)
        a.layer(2).mlp_out.weight.mul_(1e-3)
    report = prune(model, 0.3, data=calib(), importance="magnitude", **FAST)
    s = [row.sparsity for row in report.layers]
    assert s[2] == max(s) and s[2] > min(s)
    assert not report.uniform
    widths = a.describe()["mlp_width"]
    assert widths[2] == min(widths) and len(set(widths)) > 1


def test_adapt_without_amplitude_allocates_like_uniform():
    a, b = gqa_model("qwen3"), gqa_model("qwen3")
    ra = prune(a, 0.3, data=calib(), importance="magnitude", amplitude=0.0, step=0.1, **FAST)
    rb = prune(b, 0.3, data=calib(), method="uniform", importance="magnitude", step=0.1, **FAST)
    assert [r.mlp for r in ra.layers] == [r.mlp for r in rb.layers]
    assert [r.sparsity for r in ra.layers] == pytest.approx([r.sparsity for r in rb.layers])
    assert torch.equal(logits(a, IDS), logits(b, IDS))


def test_depth_pruning_drops_the_least_important_layer_first():
    model = gqa_model("llama")
    a = adapter_for(model)
    with torch.no_grad():
        a.layer(1).o.weight.mul_(1e-3)
        a.layer(1).mlp_out.weight.mul_(1e-3)
    report = prune(model, 0.3, data=calib(), method="uniform", importance="magnitude", drop_layers=1, **FAST)
    assert report.dropped_layers == [1]
    assert [r.source for r in report.layers] == [0, 2, 3]
    assert model.config.num_hidden_layers == 3
    assert model.config.compress_layer_widths["source_layers"] == [0, 2, 3]
    assert report.achieved_sparsity == pytest.approx(0.3, abs=0.05)
    assert_generates_with_cache(model)


def test_report_prints_a_table_and_saves_json_and_png(tmp_path):
    model = gqa_model("llama")
    report = prune(model, PruneConfig(sparsity=0.2, method="uniform", importance="magnitude", progress=False))
    assert isinstance(report, PruneReport)
    text = str(report)
    assert "uniform pruning by magnitude importance" in text
    lines = text.splitlines()
    assert lines[2].split() == ["layer", "from", "heads", "kv", "heads", "MLP", "width", "s_l", "params", "kept"]
    assert len([ln for ln in lines if "256 -> " in ln]) == 4
    assert "note: Layers [0, 1, 2, 3] lost MLP channels but kept every kv group" in text
    assert report.params_before - report.params_after == report.non_embedding_before - report.non_embedding_after
    assert report.save_json(tmp_path / "r.json").read_text().count('"achieved_sparsity"') == 1
    png = report.save_plot(tmp_path / "widths.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_protected_layers_keep_full_width_and_the_rest_carry_the_budget():
    model = gqa_model("llama")
    a = adapter_for(model)
    protected = [a.layer(i).q.weight.detach().clone() for i in (0, 3)]
    report = prune(model, 0.4, data=calib(), importance="taylor", protect_layers=(0, 3), step=0.1, **FAST)
    d = a.describe()
    assert [d["mlp_width"][i] for i in (0, 3)] == [256, 256] and [d["num_kv_heads"][i] for i in (0, 3)] == [3, 3]
    assert torch.equal(a.layer(0).q.weight, protected[0]) and torch.equal(a.layer(3).q.weight, protected[1])
    target = report.non_embedding_before * 0.6
    assert target - 2 * one_step(model) < report.non_embedding_after <= target
    assert [report.layers[i].sparsity for i in (0, 3)] == [0.0, 0.0]
    assert min(report.layers[i].sparsity for i in (1, 2)) > 0.6  # two layers remove what four would have
    assert report.protected_layers == [0, 3]
    assert "protected layers (original index, full width): [0, 3]" in str(report)


def test_protected_layers_are_never_dropped():
    model = gqa_model("llama")
    a = adapter_for(model)
    with torch.no_grad():  # layer 1 is the one depth pruning would drop first
        a.layer(1).o.weight.mul_(1e-3)
        a.layer(1).mlp_out.weight.mul_(1e-3)
    report = prune(model, 0.3, data=calib(), method="uniform", importance="magnitude", drop_layers=1,
                   protect_layers=[1], **FAST)
    assert 1 not in report.dropped_layers and len(report.dropped_layers) == 1
    assert report.protected_layers == [1]
    kept = [r.source for r in report.layers]
    assert report.layers[kept.index(1)].mlp == (256, 256)


# -- bad input -------------------------------------------------------------

def test_protect_layers_out_of_range_or_all_layers_are_refused_before_any_surgery():
    model = gqa_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(CompressError, match=r"protect_layers names layer\(s\) \[4, 7\], but the model has 4 decoder layers \(0-3\)"):
        prune(model, 0.3, data=calib(), protect_layers=(1, 4, 7), **FAST)
    with pytest.raises(CompressError, match="protect_layers names all 4 decoder layers, which leaves nothing to prune"):
        prune(model, 0.3, data=calib(), protect_layers=range(4), **FAST)
    with pytest.raises(CompressError, match=r"drop_layers=2 would drop every layer outside protect_layers \[0, 1\]"):
        prune(model, 0.3, data=calib(), protect_layers=(0, 1), drop_layers=2, **FAST)
    with pytest.raises(CompressError, match=r"can go while each layer keeps .* while protect_layers \[0, 1, 2\] keep their full width"):
        prune(model, 0.5, method="uniform", importance="magnitude", protect_layers=(0, 1, 2), progress=False)
    assert unchanged(model, before)


def unchanged(model, before):
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_missing_data_is_a_clear_error_and_touches_nothing():
    model = gqa_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(CompressError, match="importance='taylor' needs calibration text: pass data="):
        prune(model, 0.3, method="uniform", importance="taylor")
    with pytest.raises(CompressError, match="Adapt-Pruner's layer importance needs calibration text"):
        prune(model, 0.3, importance="magnitude")
    assert unchanged(model, before)


def test_sparsity_out_of_range_through_prune():
    with pytest.raises(CompressError, match="sparsity must be a fraction between 0 and 1"):
        prune(gqa_model("llama"), 1.0, data=calib())


def test_a_sparsity_that_would_empty_a_layer_is_refused_before_any_surgery():
    model = gqa_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(CompressError, match=r"sparsity 0.98 cannot be reached; at most [\d.]+% of the non-embedding parameters "
                                            r"can go while each layer keeps one kv group and 8 MLP channels; lower sparsity or round_to\."):
        prune(model, 0.98, method="uniform", importance="magnitude", progress=False)
    assert unchanged(model, before)


def test_asking_for_more_windows_than_calibration_sequences_is_noted():
    report = prune(gqa_model("llama"), 0.3, data=calib(n=3), **{**FAST, "calib_samples": 6})
    notes = [n for n in report.skipped if n.startswith("Calibration read")]
    assert notes == ["Calibration read 3 windows per sub-step, not calib_samples=6: the text gives 3 calibration "
                     "sequences and each gives one window; give more text (or a larger calibration split) for more."]
    assert not any("Calibration read" in n for n in prune(gqa_model("llama"), 0.3, data=calib(n=8), **FAST).skipped)


def test_calibration_shorter_than_one_sequence():
    with pytest.raises(CompressError, match="Calibration sequences are 8 tokens long, shorter than calib_seq_len=16"):
        prune(gqa_model("llama"), 0.3, data=calib(seq_len=8), **FAST)
    with pytest.raises(CompressError, match="has no sequences"):
        prune(gqa_model("llama"), 0.3, data=torch.zeros(0, 32, dtype=torch.long), **FAST)
    with pytest.raises(CompressError, match="integer token ids"):
        prune(gqa_model("llama"), 0.3, data=torch.rand(4, 32), **FAST)
    with pytest.raises(CompressError, match=r"must lie in \[0, 320\)"):
        prune(gqa_model("llama"), 0.3, data=torch.full((4, 32), 999), **FAST)


def test_model_without_adapter():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel .* is not supported"):
        prune(gpt2, 0.3, method="uniform", importance="magnitude")


def test_quantised_or_foreign_projections_are_refused():
    class Packed(nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.in_features, self.out_features = lin.in_features, lin.out_features
            self.weight = nn.Parameter(torch.zeros_like(lin.weight, dtype=torch.int8), requires_grad=False)

    model = gqa_model("llama")
    attn = adapter_for(model).attention_module(1)
    attn.k_proj = Packed(attn.k_proj)
    with pytest.raises(CompressError, match=r"Only float nn.Linear projections can be pruned, but found .*\.1: Packed"):
        prune(model, 0.3, method="uniform", importance="magnitude")


def test_taylor_on_a_model_without_loss():
    with pytest.raises(CompressError, match="returns no loss, so Taylor importance cannot be computed"):
        prune(gqa_model("bert"), 0.3, data=calib(), method="uniform", importance="taylor", **FAST)


def test_dropping_more_than_the_budget_is_refused():
    with pytest.raises(CompressError, match=r"drop_layers=2 alone removes .* more than sparsity 0.2"):
        prune(gqa_model("llama"), 0.2, data=calib(), drop_layers=2, **FAST)


def test_pruning_twice_composes():
    model = gqa_model("llama")
    first = prune(model, 0.3, data=calib(), method="uniform", importance="magnitude", drop_layers=1, **FAST)
    second = prune(model, 0.4, data=calib(), method="uniform", importance="magnitude", drop_layers=1, **FAST)
    assert second.non_embedding_before == first.non_embedding_after
    # layer sources stay indices of the original model across both calls
    sources = model.config.compress_layer_widths["source_layers"]
    assert [r.source for r in second.layers] == sources and len(sources) == 2
    assert set(sources) | set(first.dropped_layers) | set(second.dropped_layers) == {0, 1, 2, 3}
    width_after_first = {r.source: r.mlp[1] for r in first.layers}
    assert [r.mlp[0] for r in second.layers] == [width_after_first[i] for i in sources]
    assert_generates_with_cache(model)


@pytest.mark.parametrize("windows", [0, 4])
def test_kv_groups_are_chosen_by_their_measured_removal(monkeypatch, windows):
    """Scores that rank a silent kv group highest (as first-order Taylor can misrank a group a layer cannot
    lose) are overruled by measuring each group's removal; with kv_loss_windows=0 the scores decide."""
    import compress.pruning.pruner as pruner

    model = gqa_model("llama")
    a = adapter_for(model)
    g = layer_groups(a.layer(0))
    torch.manual_seed(3)
    with torch.no_grad():
        for i in range(a.num_layers):
            p = a.layer(i)
            channels = torch.randperm(256)[:88]  # silent MLP channels too, so that s = 1/3 changes nothing
            for lin in p.mlp_in:
                lin.weight[channels] = 0
            p.mlp_out.weight[:, channels] = 0
            for lin, rows in ((p.q, g.q_rows([1])), (p.k, g.kv_rows([1])), (p.v, g.kv_rows([1]))):
                lin.weight[rows] = 0
            p.o.weight[:, g.q_rows([1])] = 0
    expected = logits(model, IDS)
    monkeypatch.setattr(pruner, "kv_group_scores", lambda *args, **kw: torch.tensor([0.0, 1.0, 0.5]))
    _, before = count_parameters(model)
    sparsity = (a.num_layers * (88 * g.mlp_channel_params + g.kv_group_params) - 0.5) / before
    prune(model, sparsity, data=calib(), method="uniform", importance="taylor", step=0.5, kv_loss_windows=windows,
          **FAST)
    assert a.describe()["num_kv_heads"] == [2] * a.num_layers
    kept_silent = not torch.allclose(logits(model, IDS), expected, atol=1e-4)
    assert kept_silent == (windows == 0)


def test_kv_loss_windows_must_not_be_negative():
    with pytest.raises(CompressError, match="kv_loss_windows must be an integer >= 0, got -1"):
        PruneConfig(kv_loss_windows=-1)
