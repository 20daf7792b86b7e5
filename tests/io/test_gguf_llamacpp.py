"""GGUF exports run in a real llama.cpp (built by `make setup-llamacpp`; skipped without it).

For every GGUF type the exporter writes, llama.cpp's perplexity and top-1
tokens on the same token ids are compared with compress-lm's own model:
within 0.2% and 95% for F16 / Q8_0, 2% and 85% for the 4-bit and ternary
types (llama.cpp rounds activations to 8 bits in their dot products).  The
tokenizer test feeds hard strings to llama-tokenize and transformers.
Tiny models here; SmolLM2-135M in the slow test at the end.
"""

import pytest
import torch

from compress.io.exports import export
from compress.quantization import QuantConfig, quantize
from tests import llamacpp
from tests.io.test_export_formats import pruned_llama
from tests.io.test_gguf_tokenizer import _bpe
from tests.threads import one_torch_thread
from tests.tiny import _DECODER_COMMON, SAMPLE_TEXT, tiny_model, tiny_tokenizer

HARD_STRINGS = [
    "It's here, don't go; they'd've known. I'LL see, we'Re sure 'tis fine.",
    "Call 555-0123 at 3.14pm, pay $1,234.56 (or 12%) by 2024-12-03; x=1e-5, 0x1F, 42nd.",
    "Naïve café — “quotes”, Ünïcödé, 東京, Привет, नमस्ते, 🦙🚀 ✅ … ½",
    "def f(x):\n    return x ** 2  # four spaces\n\tif x:\n\t\tpass\n\n\n   trailing   ",
]


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def _sharpen(model, seed=0):
    """Random weights 5x the default scale: logits far from uniform, so a wrong computation shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _wide():
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{**_DECODER_COMMON, "hidden_size": 256, "intermediate_size": 512, "head_dim": 64})
    return AutoModelForCausalLM.from_config(config).float().eval()


def _quantised(model, **cfg):
    quantize(model, QuantConfig(progress=False, **cfg))
    return model


# gguf type -> (model maker, perplexity tolerance, top-1 agreement floor)
CASES = {
    "f16": (lambda: _sharpen(tiny_model("llama")), 0.002, 0.95),
    "q8_0": (lambda: _sharpen(tiny_model("llama")), 0.002, 0.95),
    "q4_0": (lambda: _quantised(_sharpen(tiny_model("llama")), method="int4", group_size=32), 0.02, 0.85),
    "q4_1": (lambda: _quantised(_sharpen(tiny_model("llama")), method="int4", group_size=32, symmetric=False), 0.02, 0.85),
    "tq2_0": (lambda: _quantised(_sharpen(_wide()), method="ternary"), 0.02, 0.85),
    "tq1_0": (lambda: _quantised(_sharpen(_wide()), method="ternary"), 0.02, 0.85),
}


def _text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text((SAMPLE_TEXT + "\n") * 4)
    return path


def _compare(model, gguf_path, tmp_path, tol, floor, n_ctx=64, text=None):
    scored = llamacpp.perplexity(gguf_path, text or _text(tmp_path), n_ctx, tmp_path)
    ppl, top1 = llamacpp.ours(model, scored)
    agree = llamacpp.top1_agreement(scored, top1)
    print(f"{gguf_path.name}: llama.cpp ppl {scored.ppl:.4f}, compress-lm {ppl:.4f}, top-1 agreement {agree:.1%} "
          f"over {top1.size} positions")
    assert scored.ppl == pytest.approx(ppl, rel=tol) and agree >= floor
    return scored


@pytest.mark.parametrize("gguf_type", list(CASES))
def test_gguf_runs_in_llamacpp_like_our_model(tmp_path, gguf_type):
    llamacpp.tool("llama-perplexity")
    make, tol, floor = CASES[gguf_type]
    model = make()
    report = export(model, tiny_tokenizer(), tmp_path / "g", "gguf", gguf_type=gguf_type)
    if gguf_type.startswith("tq"):
        assert report.details["tensor_types"].get(gguf_type.upper())  # whole TQ blocks, not only fallbacks
    _compare(model, tmp_path / "g" / report.details["gguf_file"], tmp_path, tol, floor)


def test_per_layer_widths_run_in_llamacpp_as_deci(tmp_path):
    llamacpp.tool("llama-perplexity")
    model = _sharpen(pruned_llama())
    report = export(model, tiny_tokenizer(), tmp_path / "g", "gguf")
    assert report.details["architecture"] == "deci"
    _compare(model, tmp_path / "g" / report.details["gguf_file"], tmp_path, 0.002, 0.95)


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_greedy_continuation_matches(tmp_path, gguf_type):
    llamacpp.tool("llama-simple")
    tok = tiny_tokenizer()
    model = _sharpen(tiny_model("llama"))
    report = export(model, tok, tmp_path / "g", "gguf", gguf_type=gguf_type)
    prompt = "Shall I compare thee"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)[0].tolist()
    ours = llamacpp.token_bytes(tok, out)
    theirs = llamacpp.greedy(tmp_path / "g" / report.details["gguf_file"], prompt, 12)
    assert theirs.startswith(ours), f"llama.cpp: {theirs[:200]!r}\ncompress-lm: {ours!r}"


@pytest.mark.parametrize("pre", ["gpt-2", "smollm"])
def test_llamacpp_tokenizes_hard_strings_as_transformers(tmp_path, pre):
    from tokenizers import pre_tokenizers

    llamacpp.tool("llama-tokenize")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = _bpe(byte_level if pre == "gpt-2" else
               pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]))
    report = export(tiny_model("llama"), tok, tmp_path / "g", "gguf")
    path = tmp_path / "g" / report.details["gguf_file"]
    for text in HARD_STRINGS + ["<s>Shall I</s><pad> compare"]:
        assert llamacpp.tokenize(path, text) == tok.encode(text), text


# -- SmolLM2-135M -------------------------------------------------------------

SMOLLM2_STRINGS = HARD_STRINGS + [
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat's 2+2?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.mark.slow
def test_smollm2_gguf_in_llamacpp(tmp_path):
    """SmolLM2's F16 export: the smollm pre-tokenizer, identical ids on hard strings, perplexity and greedy text."""
    import compress
    from compress.data import unseen_documents
    from compress.io.exports.gguf_pretok import KNOWN_HASHES, probe_hash

    llamacpp.tool("llama-perplexity")
    model, tok = compress.load_model("smollm2-135m")
    assert KNOWN_HASHES.get(probe_hash(tok)) == "smollm"
    report = export(model, tok, tmp_path / "g", "gguf", gguf_type="f16")
    path = tmp_path / "g" / report.details["gguf_file"]
    differ = [s for s in SMOLLM2_STRINGS if llamacpp.tokenize(path, s) != tok.encode(s)]
    assert not differ
    # held-out news prose (the built-in 'news' text), 4 chunks of 128 tokens
    text = tmp_path / "news.txt"
    text.write_text("\n".join(t for _, t in unseen_documents()[:6]))
    scored = _compare(model, path, tmp_path, 0.002, 0.95, n_ctx=128, text=text)
    assert scored.chunks.shape[0] >= 4
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)[0].tolist()
    assert llamacpp.greedy(path, "The capital of France is", 6).startswith(llamacpp.token_bytes(tok, out))


def test_mixed_formats_run_in_llamacpp(tmp_path):
    """A size budget's mix, each tensor in its own type (Q4_0, Q4_1, TQ2_0, F16, Q8_0 token_embd), in one file."""
    llamacpp.tool("llama-perplexity")
    model = _quantised(_sharpen(_wide()), method="int4", group_size=32, embeddings="int8", overrides={
        "k_proj": {"group_size": 64, "symmetric": False}, "v_proj": None, "o_proj": {"group_size": 128},
        "down_proj": "ternary"})
    report = export(model, tiny_tokenizer(), tmp_path / "g", "gguf")
    assert report.details["gguf_type"] == "mixed"
    assert {"Q4_0", "Q4_1", "TQ2_0", "F16", "Q8_0"} <= set(report.details["tensor_types"])
    _compare(model, tmp_path / "g" / report.details["gguf_file"], tmp_path, 0.02, 0.85)


@pytest.mark.parametrize("embeddings", ["int8", "int4"])
def test_quantised_embeddings_run_in_llamacpp(tmp_path, embeddings):
    """token_embd as Q8_0 / Q4_0 (tied: llama.cpp's output reads it too) computes what our model computes."""
    llamacpp.tool("llama-perplexity")
    model = _quantised(_sharpen(tiny_model("llama")), method="int4", group_size=32, embeddings=embeddings)
    report = export(model, tiny_tokenizer(), tmp_path / "g", "gguf")
    assert report.details["tensor_types"].get("Q8_0" if embeddings == "int8" else "Q4_0")
    _compare(model, tmp_path / "g" / report.details["gguf_file"], tmp_path, 0.02, 0.85)
