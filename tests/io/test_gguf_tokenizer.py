"""The tokenizer and general.* fields a GGUF export carries, read back with gguf's reader (no llama.cpp needed).

Running the files in llama.cpp itself is tests/io/test_gguf_llamacpp.py.
"""
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import compress
from compress.cli import main
from compress.io.exports import ExportError, export
from compress.io.exports.gguf_pretok import pre_tokenizer_name
from compress.io.exports.gguf_vocab import _spec
from tests.threads import one_torch_thread
from tests.tiny import SAMPLE_TEXT, VOCAB, tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def _bpe(pre, **special) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the tiny sample text, with pre-tokenizer ``pre``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=["<pad>", "<s>", "</s>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([SAMPLE_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", **special)


def _fields(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.merges")}


def _name(tok):
    return pre_tokenizer_name(tok, _spec(tok)[0])


def test_pre_tokenizer_names_follow_the_split():
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert _name(_bpe(byte_level)) == "gpt-2"
    # SmolLM2's own tokenizer.json: every digit apart, then GPT-2's regex (llama.cpp's smollm regex set)
    digits = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    assert _name(_bpe(digits)) == "smollm"
    # a split llama.cpp has no regex set for: not given a wrong name
    assert _name(_bpe(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False), byte_level]))) is None
    assert _name(_bpe(pre_tokenizers.ByteLevel(add_prefix_space=True))) is None


def test_gguf_tokenizer_fields_and_general_metadata(tmp_path):
    tok = _bpe(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)]))
    tok.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
    model = tiny_model("llama")
    model.config.source_model = {"name": "Tiny Llama 1M Instruct", "basename": "tiny-llama", "license": "apache-2.0"}
    report = export(model, tok, tmp_path / "some-output-dir", "gguf", gguf_type="q8_0")
    f = _fields(tmp_path / "some-output-dir" / report.details["gguf_file"])
    assert f["tokenizer.ggml.pre"] == "smollm" and f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.add_bos_token"] is False and f["tokenizer.ggml.add_eos_token"] is False
    assert f["tokenizer.ggml.add_space_prefix"] is False
    assert f["tokenizer.ggml.bos_token_id"] == 1 and f["tokenizer.ggml.eos_token_id"] == 2
    assert f["tokenizer.chat_template"] == tok.chat_template
    assert f["general.name"] == "Tiny Llama 1M Instruct" and f["general.basename"] == "tiny-llama"
    assert f["general.license"] == "apache-2.0" and "some-output-dir" not in str(f)
    params = sum(p.numel() for p in model.parameters())  # tied: counted once
    assert f["general.size_label"] == f"{round(params / 1e3)}K"
    assert not report.notes


def test_add_bos_follows_what_the_tokenizer_does(tmp_path):
    from tokenizers import processors

    tok = _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False))
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tok("a")["input_ids"][0] == 1
    report = export(tiny_model("llama"), tok, tmp_path / "g", "gguf")
    assert _fields(tmp_path / "g" / report.details["gguf_file"])["tokenizer.ggml.add_bos_token"] is True


def test_source_metadata_survives_save_and_load(tmp_path):
    model = tiny_model("llama")
    tok = _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False))
    model.config.source_model = {"name": "Tiny", "license": "mit"}
    first = export(model, tok, tmp_path / "g1", "gguf")
    # a GGUF loaded by compress-lm remembers its general.* fields; a checkpoint of it keeps them
    loaded = compress.load_model(tmp_path / "g1" / first.details["gguf_file"])
    assert loaded.model.config.source_model["name"] == "Tiny"
    compress.save(loaded.model, tmp_path / "ckpt", loaded.tokenizer)
    again = compress.load(tmp_path / "ckpt")
    second = export(again.model, again.tokenizer, tmp_path / "g2", "gguf")
    f = _fields(tmp_path / "g2" / second.details["gguf_file"])
    assert f["general.name"] == "Tiny" and f["general.license"] == "mit"


@pytest.mark.parametrize("pre,why", [
    (pre_tokenizers.ByteLevel(add_prefix_space=True), r"ByteLevel\[True, True\]"),
    (pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel(add_prefix_space=False)]),
     r"Whitespace then ByteLevel"),
])
def test_a_pre_tokenizer_llama_cpp_lacks_is_refused(tmp_path, pre, why):
    with pytest.raises(ExportError, match=rf"This model cannot be exported as gguf: its tokenizer's pre-tokenizer "
                                          rf"\({why}.*\) splits text in a way none of llama.cpp's pre-tokenizers does, "
                                          rf"so llama.cpp would give other token ids; export as hf\.$"):
        export(tiny_model("llama"), _bpe(pre), tmp_path / "g", "gguf")
    assert not (tmp_path / "g").exists()


def test_cli_refuses_a_tokenizer_llama_cpp_would_split_differently(tmp_path, capsys):
    path = tmp_path / "m"
    tiny_model("llama").save_pretrained(path)
    _bpe(pre_tokenizers.ByteLevel(add_prefix_space=True)).save_pretrained(path)
    assert main(["export", str(path), "--format", "gguf", "-o", str(tmp_path / "g"), "--no-verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("compress-lm export: This model cannot be exported as gguf: its tokenizer's pre-tokenizer")
    assert not (tmp_path / "g").exists()


def test_a_smollm_gguf_loads_with_its_digit_split(tmp_path):
    """transformers' GGUF tokenizer converter drops the digit split that tokenizer.ggml.pre = smollm means."""
    import json

    tok = _bpe(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)]))
    report = export(tiny_model("llama"), tok, tmp_path / "g", "gguf")
    loaded = compress.load_model(tmp_path / "g" / report.details["gguf_file"]).tokenizer
    pre = json.loads(loaded.backend_tokenizer.to_str())["pre_tokenizer"]
    assert [p["type"] for p in pre["pretokenizers"]] == ["Digits", "ByteLevel"]
    for text in ("a ½ and 2024", "x 3.14 ¾"):
        assert loaded.encode(text) == tok.encode(text)
