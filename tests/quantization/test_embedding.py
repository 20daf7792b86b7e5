"""Quantised embeddings and output heads: error bounds, tying, checkpoints, GGUF, bad options."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from compress.cli import main
from compress.errors import ConfigError
from compress.io import load, save
from compress.io.exports import ExportError, export
from compress.quantization import QuantConfig, QuantError, quantize
from compress.quantization.embedding import (
    QuantEmbedding,
    TiedQuantHead,
    pack_int4_rows,
    quantize_embeddings,
    quantize_rows,
    unpack_int4_rows,
)
from tests.tiny import as_stored, tiny_model

IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 300, 5]])


def _out(model):
    with torch.no_grad():
        return model(input_ids=IDS)[0]


@pytest.mark.parametrize("bits,group", [(8, 64), (4, 32), (4, 16)])
def test_error_is_at_most_half_a_step_of_the_group_scale(bits, group):
    w = torch.randn(50, 64) * torch.logspace(-3, 1, 50)[:, None]  # rows of very different sizes
    codes, scales = quantize_rows(w, bits, group)
    s = scales.to(torch.float32).repeat_interleave(group, dim=1)
    back = codes.to(torch.float32) * s
    assert (back - w).abs().le(s / 2 * (1 + 1e-6)).all()
    top = 127 if bits == 8 else 7
    assert codes.abs().max() <= (127 if bits == 8 else 8) and codes.max() <= top
    # the scale is the group's largest |w| / top, rounded up to float16 (at least its smallest normal): no weight clips
    big = w.abs().reshape(50, -1, group).amax(-1)
    s32 = scales.to(torch.float32)
    assert (s32 * top >= big).all()
    normal = big / top > torch.finfo(torch.float16).tiny
    assert normal.any() and (s32[normal] * top <= big[normal] * 1.001).all()
    assert torch.equal(s32[~normal], torch.full_like(s32[~normal], torch.finfo(torch.float16).tiny))


def test_int4_packing_round_trips():
    codes = torch.randint(-8, 8, (7, 64), dtype=torch.int8)
    packed = pack_int4_rows(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 32)
    assert torch.equal(unpack_int4_rows(packed), codes)
    low, high = int(codes[0, 0]) + 8, int(codes[0, 1]) + 8  # Python ints: int8 arithmetic would overflow the shift
    assert int(packed[0, 0]) == low | (high << 4)  # column 2j low nibble, 2j+1 high


@pytest.mark.parametrize("bits", [8, 4])
def test_lookup_dequantises_only_the_rows_it_gathers(bits, monkeypatch):
    w = torch.randn(100, 64)
    m = QuantEmbedding.from_weight(w, bits, 32)
    ids = torch.tensor([[3, 99, 3], [0, 1, 2]])
    full = m.dequantize_weight()
    seen = []
    real = QuantEmbedding.codes

    def spy(self, rows=None):
        seen.append(None if rows is None else rows.numel())
        return real(self, rows)

    monkeypatch.setattr(QuantEmbedding, "codes", spy)
    out = m(ids)
    assert seen == [6] and torch.equal(out, full[ids])
    assert (full - w).abs().max() < (0.01 if bits == 8 else 0.2) * w.abs().max()


def test_head_logits_match_a_linear_on_the_dequantised_table(monkeypatch):
    import compress.quantization.embedding as emb

    monkeypatch.setattr(emb, "HEAD_CHUNK_ROWS", 7)  # several chunks, the last partial
    m = QuantEmbedding.from_weight(torch.randn(30, 64), 4, 32, role="head")
    x = torch.randn(2, 3, 64)
    assert torch.allclose(m(x), x @ m.dequantize_weight().t(), atol=1e-5)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_a_tied_pair_is_quantised_once_and_stays_tied(tmp_path, kind):
    model = tiny_model("llama")
    before = _out(model)
    quantize(model, QuantConfig(group_size=32, embeddings=kind, progress=False))
    embed = model.get_input_embeddings()
    assert isinstance(embed, QuantEmbedding) and isinstance(model.lm_head, TiedQuantHead)
    assert model.lm_head.table is embed
    after = _out(model)
    assert (after - before).abs().max() < 0.5 * before.abs().max()  # int4 layers + quantised embeddings: close, not equal
    save(model, tmp_path / "ck")
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        keys = [k for k in f.keys() if "embed" in k or "lm_head" in k]
    assert sorted(keys) == ["model.embed_tokens.qdata", "model.embed_tokens.scales"]  # one stored table
    manifest = json.loads((tmp_path / "ck" / "compress.json").read_text())
    assert manifest["tied_head"] == "lm_head" and list(manifest["quantized_embeddings"]) == ["model.embed_tokens"]
    again = load(tmp_path / "ck").model
    assert again.lm_head.table is again.get_input_embeddings()
    assert torch.equal(_out(again), _out(as_stored(model)))


def test_an_untied_head_is_quantised_on_its_own(tmp_path):
    model = tiny_model("mistral")  # untied
    quantize(model, QuantConfig(group_size=32, embeddings="int4", progress=False))
    assert isinstance(model.lm_head, QuantEmbedding) and model.lm_head.role == "head"
    assert model.lm_head is not model.get_input_embeddings()
    save(model, tmp_path / "ck")
    assert torch.equal(_out(load(tmp_path / "ck").model), _out(as_stored(model)))


def test_int8_embeddings_are_closer_than_int4():
    ref = tiny_model("llama")
    errs = {}
    for kind in ("int8", "int4"):
        model = tiny_model("llama")
        quantize_embeddings(model, kind, 32)
        errs[kind] = float((_out(model) - _out(ref)).abs().max())
    assert 0 < errs["int8"] < errs["int4"]


# -- bad options -------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"embeddings": "int3"}, "embeddings must be one of 'int8', 'int4' or None, got 'int3'"),
    ({"embeddings": "int4", "embedding_group_size": 24}, "embedding_group_size must be a power of two >= 2"),
])
def test_bad_embedding_options_are_one_sentence(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kwargs)


def test_a_group_that_does_not_divide_the_width_is_refused_before_anything_changes():
    model = tiny_model("llama")  # width 64
    before = _out(model)
    with pytest.raises(QuantError, match="embedding_group_size 128 does not divide the embedding width 64"):
        quantize(model, QuantConfig(group_size=32, embeddings="int4", embedding_group_size=128, progress=False))
    assert not any(hasattr(m, "qweight") for m in model.modules()) and torch.equal(_out(model), before)


def test_an_embedding_shared_other_than_by_a_plain_tie_is_refused():
    model = tiny_model("mistral")
    model.lm_head.weight = nn.Parameter(model.get_input_embeddings().weight.data)  # same storage, another Parameter
    with pytest.raises(QuantError, match="shares storage with the input embedding without being a plain tie"):
        quantize_embeddings(model, "int8")


@pytest.mark.parametrize("args,match", [
    (["--embeddings", "int3"], "argument --embeddings: invalid choice: 'int3'"),
    (["--embeddings", "int4", "--embedding-group-size", "24"], "embedding_group_size must be a power of two"),
])
def test_cli_bad_embedding_values_exit_2(args, match, tmp_path, capsys):
    try:
        code = main(["quantize", "smollm2-135m", "--method", "int4", "-o", str(tmp_path / "o"), *args])
    except SystemExit as e:
        code = e.code
    assert code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- exports ------------------------------------------------------------------

def _quantised(kind, family="llama"):
    model = tiny_model(family)
    quantize(model, QuantConfig(group_size=32, embeddings=kind, progress=False))
    return model


@pytest.mark.parametrize("kind,family,dtype", [("int8", "llama", "float32"), ("int4", "mistral", "bfloat16")])
def test_hf_dequantises_quantised_embeddings_and_transformers_reads_them(tmp_path, kind, family, dtype):
    from safetensors import safe_open

    model = _quantised(kind, family)
    # verify: transformers loads it without compress-lm, logits against ours with the floats rounded as stored
    report = export(model, None, tmp_path / "hf", "hf", verify=True, dtype=dtype)
    if dtype == "float32":
        assert "max |logit difference| 0.00e+00" in report.check
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        table = f.get_tensor("model.embed_tokens.weight")
    assert not any(n.endswith((".qdata", ".scales")) and "embed" in n for n in names)
    assert torch.equal(table, model.get_input_embeddings().dequantize_weight(getattr(torch, dtype)))
    assert ("lm_head.weight" in names) != model.config.tie_word_embeddings  # a tied pair stays one tensor


@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors"])
def test_formats_without_a_type_for_quantised_embeddings_refuse(tmp_path, fmt):
    with pytest.raises(ExportError, match=f"hold quantised embeddings, which the {fmt} format has no type for"):
        export(_quantised("int8"), None, tmp_path / "x", fmt)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind,family,ggml", [("int8", "llama", "Q8_0"), ("int4", "llama", "Q4_0"),
                                              ("int4", "mistral", "Q4_0")])
def test_gguf_stores_quantised_embeddings_exactly(tmp_path, kind, family, ggml):
    import gguf

    model = _quantised(kind, family)
    report = export(model, None, tmp_path / "g", "gguf")
    reader = gguf.GGUFReader(str(tmp_path / "g" / report.details["gguf_file"]))
    tensors = {t.name: t for t in reader.tensors}
    t = tensors["token_embd.weight"]
    assert t.tensor_type.name == ggml
    values = gguf.dequantize(t.data, t.tensor_type)
    np.testing.assert_array_equal(values, model.get_input_embeddings().dequantize_weight().numpy())
    if family == "llama":
        assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd for the output
    else:
        out = tensors["output.weight"]
        assert out.tensor_type.name == ggml
        np.testing.assert_array_equal(gguf.dequantize(out.data, out.tensor_type), model.lm_head.dequantize_weight().numpy())


def test_gguf_export_with_quantised_embeddings_passes_the_outside_check(tmp_path):
    """transformers' GGUF loader dequantises Q4_0 token_embd; logits match ours."""
    from tests.tiny import tiny_tokenizer

    report = export(_quantised("int4"), tiny_tokenizer(), tmp_path / "g", "gguf", verify=True)
    assert report.check


def test_gguf_refuses_embedding_groups_its_blocks_cannot_hold(tmp_path):
    model = tiny_model("llama")
    quantize(model, QuantConfig(group_size=32, embeddings="int4", embedding_group_size=16, progress=False))
    with pytest.raises(ExportError, match="groups of 16 .* GGUF's 32-weight blocks cannot hold; quantise the embeddings with embedding_group_size 32"):
        export(model, None, tmp_path / "g", "gguf")


def test_parameter_counts_treat_quantised_embeddings_as_embeddings():
    from compress.sizes import count_parameters

    model = tiny_model("mistral")  # untied: embedding and head both counted in the total
    before = count_parameters(model)
    quantize_embeddings(model, "int4")
    assert count_parameters(model) == before



def test_a_scaled_word_embedding_keeps_its_scale(tmp_path):
    """Gemma3 multiplies looked-up rows by sqrt(hidden); the quantised lookup does too, and the checkpoint keeps it."""
    model = tiny_model("gemma3")
    before = _out(model)
    embed = model.get_input_embeddings()
    rows = embed(IDS)
    quantize_embeddings(model, "int8")
    q = model.get_input_embeddings()
    assert q.embed_scale == pytest.approx(64 ** 0.5)
    assert (q(IDS) - rows).abs().max() < 0.01 * rows.abs().max()
    assert (_out(model) - before).abs().max() < 0.05 * before.abs().max()
    save(model, tmp_path / "ck")
    again = load(tmp_path / "ck").model
    assert again.get_input_embeddings().embed_scale == q.embed_scale
    assert torch.equal(_out(again), _out(as_stored(model)))


def test_an_embedding_subclass_with_its_own_lookup_is_refused():
    class Odd(nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) + 1

    model = tiny_model("llama")
    model.model.embed_tokens = Odd(320, 64)
    with pytest.raises(QuantError, match="the input embedding is a Odd, whose lookup is not a plain nn.Embedding's"):
        quantize_embeddings(model, "int8")


def test_the_adapter_still_sees_a_quantised_tied_pair_as_tied():
    from compress.arch import adapter_for

    tied, untied = tiny_model("llama"), tiny_model("mistral")
    for model in (tied, untied):
        quantize_embeddings(model, "int8")
    assert adapter_for(tied).tied_embeddings and not adapter_for(untied).tied_embeddings
