"""benchmarks/quant_quality.py on a tiny model: its metrics agree with compress.evaluate, its bit counts are real."""
from __future__ import annotations

import copy

import pytest
import torch

import compress
from compress.eval import EvalConfig
from compress.quantization import QuantConfig, quantize
from tests.tiny import tiny_model
from tests.bench_script import load_benchmark

IDS = torch.randint(4, 300, (6, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("quant_quality")


def test_the_shared_pass_measures_what_compress_evaluate_measures(bench):
    reference = tiny_model("llama")
    model = copy.deepcopy(reference)
    quantize(model, QuantConfig(group_size=32, progress=False))
    mine = bench.compare_causal(reference, {"int4": model}, IDS, batch_size=4)  # batches of 4 and 2
    rep = compress.evaluate(model, IDS, reference=reference, config=EvalConfig(batch_size=3, progress=False))
    assert mine["int4"]["perplexity"] == pytest.approx(rep.model.perplexity, rel=1e-5)
    assert mine["int4"]["kl_to_fp32"] == pytest.approx(rep.kl_to_reference, rel=1e-4)
    assert mine["int4"]["top1_agreement"] == pytest.approx(rep.top1_agreement)
    assert mine["fp32"]["kl_to_fp32"] == 0 and mine["fp32"]["top1_agreement"] == 1
    assert mine["fp32"]["perplexity"] == pytest.approx(rep.reference.perplexity, rel=1e-5)
    assert len(mine["int4"]["per_sequence_kl"]) == len(IDS)


def test_peer_baselines_replace_the_same_modules_and_count_their_stored_bytes(bench):
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("hqq")
    reference = tiny_model("llama")
    names = ["model.layers.0.mlp.up_proj", "model.layers.1.self_attn.q_proj"]  # [96, 64] and [64, 64]
    with torch.no_grad():
        ref = reference(IDS).logits
    # what each library itself serialises: bitsandbytes every non-bias tensor (codes, absmax, nested absmax,
    # lookup tables, packed state); HQQ its codes, scales and zero points (beside a few metadata scalars)
    stored_keys = {"nf4": lambda k: not k.endswith("bias"), "hqq": lambda k: k in ("W_q", "scale", "zero")}
    for lib, make in (("nf4", bench.nf4_linear), ("hqq", lambda lin: bench.hqq_linear(lin, 32))):
        model = copy.deepcopy(reference)
        info = bench.replace_with(model, names, make)
        assert info["weights"] == 96 * 64 + 64 * 64
        saved = sum(t.nbytes for name in names for k, t in model.get_submodule(name).state_dict().items()
                    if torch.is_tensor(t) and stored_keys[lib](k))
        assert info["stored_bytes"] == saved
        assert info["bits_per_weight"] > 4.5  # tiny layers: fixed tables and fp32 scales weigh a lot here
        assert type(model.get_submodule(names[0])) is not torch.nn.Linear
        with torch.no_grad():
            out = model(IDS).logits
        assert not torch.equal(out, ref) and (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_paired_comparison_is_signed_and_bounded(bench):
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 2.5, 3.5, 5.0]
    p = bench.paired(a, b)
    assert p["mean_diff"] == pytest.approx(-0.75)
    assert p["ci95"][0] <= -0.75 <= p["ci95"][1] < 0
    assert p["fraction_a_lower"] == 1.0


def test_the_causal_part_measures_both_domains_against_fp32_in_one_run(bench, monkeypatch):
    import argparse

    from tests.tiny import tiny_tokenizer

    monkeypatch.setattr(compress, "load_model", lambda name: (tiny_model("llama"), tiny_tokenizer()))
    # bitsandbytes needs whole 64-blocks per row, which the tiny layers do not have: a stand-in row
    monkeypatch.setattr(bench, "nf4_linear", lambda lin: (copy.deepcopy(lin), lin.weight.numel() // 2))
    args = argparse.Namespace(model="tiny", seq_len=16, eval_seqs=3, calib_seqs=4, batch_size=2, group_size=32,
                              damp=0.01, act_order=True, clip_search=True, ablate=True, skip_ternary=True)
    out = bench.causal_part(args, None)
    assert out["domains"] == ["shakespeare", "news"]
    rows = out["rows"]
    assert {"int4 GPTQ g32", "int4 RTN g32 no clip search", "int4 GPTQ g32 no act_order"} <= set(rows)
    for label, row in rows.items():
        if label == "fp32":
            assert all(d["ppl_ratio_to_fp32"] == 1.0 and d["kl_to_fp32"] == 0 for d in row["domains"].values())
            continue
        shak, news = row["domains"]["shakespeare"], row["domains"]["news"]
        assert row["perplexity"] == shak["perplexity"] and shak["perplexity"] != news["perplexity"]
        assert news["ppl_ratio_to_fp32"] == pytest.approx(news["perplexity"] / rows["fp32"]["domains"]["news"]["perplexity"])
    text = bench.table({"causal": out})
    assert "news ppl (x fp32)" in text and text.count("\n") == len(rows) + 2
