"""Generated text (compress.generated), data mixes with shares, and the default text: on tiny random models."""
import json

import pytest
import torch

from compress.data import TextConfig, TextError, default_source, evaluation_domains, heldout_rows, load_text, mix_parts
from compress.errors import CompressError
from compress.generated import GenerateConfig, GenerationError, cache_path, generate_texts, generated_documents, tokenizer_fingerprint
from compress.io.fingerprint import model_fingerprint
from tests.tiny import tiny_model, tiny_tokenizer

SMALL = GenerateConfig(tokens=160, sample_len=24, batch_size=8, min_tokens=4, progress=False)
TEXT = TextConfig(seq_len=16)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_LM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def short_plays(monkeypatch):
    """The built-in plays cut to a few thousand characters (the tiny tokenizer reads all 38 slowly)."""
    import compress.data as data

    plays = data.builtin_documents()[:2]
    monkeypatch.setattr(data, "builtin_documents", lambda: [(n, t[:6000]) for n, t in plays])


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_generation_is_seeded_deduplicated_and_long_enough(tok):
    model = tiny_model("llama")
    a, stats = generate_texts(model, tok, SMALL)
    b, _ = generate_texts(model, tok, SMALL)
    c, _ = generate_texts(model, tok, GenerateConfig(**{**SMALL.key_settings(), "seed": 1, "progress": False}))
    assert a == b and a != c
    assert len({" ".join(d.lower().split())[:200] for d in a}) == len(a)  # no two samples alike
    assert stats["tokens"] >= SMALL.tokens and stats["tokens_per_second"] > 0
    assert stats["starts"] == ["bos", "first-token"]  # the tiny tokenizer has no chat template


def test_chat_template_starts_are_used_where_the_tokenizer_has_one(tok):
    chat_tok = tiny_tokenizer()
    chat_tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                              "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    docs, stats = generate_texts(tiny_model("llama"), chat_tok, GenerateConfig(**{**SMALL.key_settings(), "starts": ("chat",), "progress": False}))
    assert stats["starts"] == ["chat"]
    assert all(d.startswith("<s>user:") for d in docs)  # the template's user turn, written by the model


def test_load_text_generated_is_cached_and_the_cache_is_reused(tok, cache_in_tmp, monkeypatch):
    model = tiny_model("llama")
    first = load_text("generated", tok, TEXT, model=model, generate=SMALL)
    files = list((cache_in_tmp / "generated").glob("*.json"))
    assert len(files) == 1 and first.sources[0].startswith("generated/")
    monkeypatch.setattr("compress.generated.generate_texts", lambda *a, **k: pytest.fail("generated again despite the cache"))
    again = load_text(["generated"], tok, TEXT, model=model, generate=SMALL)
    assert again.fingerprint == first.fingerprint
    assert torch.equal(again.train, first.train)


def _write_cache(model, tok, cfg=SMALL):
    docs = generated_documents(model, tok, cfg, log=None)
    return cache_path(model_fingerprint(model), tokenizer_fingerprint(tok), cfg), [d for _, d in docs]


def test_a_truncated_cache_is_regenerated_not_used(tok):
    model = tiny_model("llama")
    path, docs = _write_cache(model, tok)
    path.write_text(path.read_text()[: len(path.read_text()) // 2])  # cut short, as a crash mid-copy would
    logs = []
    again = generated_documents(model, tok, SMALL, log=logs.append)
    assert [d for _, d in again] == docs
    assert any("truncated or damaged" in m and "generating it again" in m for m in logs)
    json.loads(path.read_text())  # whole again


def test_a_cache_of_another_model_is_regenerated_not_used(tok):
    model, other = tiny_model("llama"), tiny_model("llama", seed=5)
    path, docs = _write_cache(model, tok)
    data = json.loads(path.read_text())
    data["model_fingerprint"] = model_fingerprint(other)  # as if another model had written this file
    data["documents"] = ["not this model's text"] * 3
    path.write_text(json.dumps(data))
    logs = []
    again = generated_documents(model, tok, SMALL, log=logs.append)
    assert [d for _, d in again] == docs
    assert any("another model" in m for m in logs)


def test_an_edited_cache_is_regenerated(tok):
    model = tiny_model("llama")
    path, docs = _write_cache(model, tok)
    data = json.loads(path.read_text())
    data["documents"][0] = "edited"
    path.write_text(json.dumps(data))
    logs = []
    assert [d for _, d in generated_documents(model, tok, SMALL, log=logs.append)] == docs
    assert any("sha256" in m for m in logs)


@pytest.mark.parametrize("family", ["bert", "bert-mlm"])
def test_encoders_cannot_generate_one_sentence(tok, family):
    with pytest.raises(GenerationError, match="cannot generate text .* give it text files"):
        load_text("generated", tok, TEXT, model=tiny_model(family), generate=SMALL)


def test_generated_without_a_model_says_to_pass_it(tok):
    with pytest.raises(GenerationError, match="pass model="):
        load_text("generated", tok, TEXT)


@pytest.mark.parametrize("bad", [dict(tokens=0), dict(temperature=0.0), dict(top_p=1.5), dict(starts=("nope",)),
                                 dict(min_tokens=64, sample_len=32)])
def test_bad_generation_settings(bad):
    with pytest.raises(CompressError):
        GenerateConfig(**bad)


def test_default_source_is_generated_for_causal_models_and_text_for_encoders():
    assert default_source(tiny_model("llama")) != "shakespeare"
    assert default_source(tiny_model("bert")) == "shakespeare"
    assert default_source(None) == "shakespeare"


# -- mixes ---------------------------------------------------------------------

def test_mix_parts_reads_shares_in_every_spelling():
    assert mix_parts(["generated", "notes/"]) == [("generated", 0.5), ("notes/", 0.5)]
    assert mix_parts(["generated=0.7", "notes/=0.3"]) == [("generated", 0.7), ("notes/", 0.3)]
    assert mix_parts({"generated": 0.25, "shakespeare": 0.75}) == [("generated", 0.25), ("shakespeare", 0.75)]
    assert mix_parts(["a.txt", "b.txt"]) is None  # plain files: read as one text, as before
    assert mix_parts("generated") is None


@pytest.mark.parametrize("source, message", [
    (["generated=0.7", "notes/=0.7"], "sum to 1.4, not 1"),
    (["generated=0.7", "notes/"], "shares for some texts but not for notes/"),
    ({"generated": 0, "notes/": 1.0}, "must be a number above 0"),
    (["generated", "generated"], "same text twice"),
])
def test_shares_that_do_not_sum_sensibly_are_one_sentence(source, message):
    with pytest.raises(TextError, match=message):
        mix_parts(source)


def test_a_mix_takes_each_text_at_its_share(tok, tmp_path, text_file):
    model = tiny_model("llama")
    mix = load_text({"generated": 0.25, str(text_file): 0.75}, tok, TEXT, model=model, generate=SMALL)
    gen = load_text("generated", tok, TEXT, model=model, generate=SMALL)
    n = len(mix.calibration) + len(mix.train) + len(mix.eval)
    n_gen = len(gen.calibration) + len(gen.train) + len(gen.eval)
    assert abs(n - 4 * n_gen) <= 4  # the scarce generated text sets the total: a quarter of it
    assert any(s.startswith("generated/") for s in mix.sources) and str(text_file) in mix.sources


def test_an_empty_text_in_a_mix_is_one_sentence(tok, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(TextError, match="in the data mix is empty; put text in it or leave it out"):
        load_text(["generated", str(empty)], tok, TEXT, model=tiny_model("llama"), generate=SMALL)


def test_a_mix_with_shakespeare_keeps_its_held_out_split_out(tok, short_plays):
    model = tiny_model("llama")
    mix = load_text({"generated": 0.5, "shakespeare": 0.5}, tok, TEXT, model=model, generate=SMALL)
    plays = load_text("shakespeare", tok, TEXT)
    held = {tuple(r.tolist()) for r in plays.eval}
    used = {tuple(r.tolist()) for r in torch.cat([mix.train, mix.calibration])}
    assert not held & used
    assert len(heldout_rows(100, TEXT)) == 10


def test_evaluation_domains_of_generated_text(tok, short_plays):
    model = tiny_model("llama")
    domains = evaluation_domains(tok, "generated", TEXT, model=model, generate=SMALL)
    assert list(domains) == ["generated", "shakespeare", "news"]
    assert all(t.shape[1] == 16 for t in domains.values())


def test_cli_generated_on_an_encoder_exits_2(tmp_path, tok, capsys):
    from compress.cli import main

    bert = tiny_model("bert-mlm")
    bert.save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "bert"), "--data", "generated", "--seq-len", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("compress-lm eval: ") and "cannot generate text" in err


def test_cli_bad_share_exits_2(tiny_dir, capsys):
    from compress.cli import main

    assert main(["eval", str(tiny_dir), "--data", "generated=0.9", "shakespeare=0.9", "--seq-len", "16"]) == 2
    assert "sum to 1.8" in capsys.readouterr().err


def test_cli_bad_generate_tokens_exits_2(tiny_dir, capsys):
    from compress.cli import main

    assert main(["eval", str(tiny_dir), "--data", "generated", "--generate-tokens", "0", "--seq-len", "16"]) == 2
    assert "generate tokens must be an integer >= 1, got 0" in capsys.readouterr().err
