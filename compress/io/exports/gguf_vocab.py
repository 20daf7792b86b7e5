"""The tokenizer inside a GGUF file (``tokenizer.ggml.*``), which llama.cpp requires.

Written for byte-level BPE tokenizers (GPT-2 style, as SmolLM2, Llama 3 and
Qwen use), as llama.cpp's convert_hf_to_gguf.py writes them: tokens, token
types, merges, special token ids, chat template, the pre-tokenizer name
(``gguf_pretok``), and whether a BOS / EOS is added, measured on the
tokenizer itself (llama.cpp adds a BOS to every BPE prompt unless told
not to).  Tokenizers llama.cpp would split differently are refused.
"""
from __future__ import annotations

import json
import tempfile
from typing import Any, Optional

from compress.io.exports import gguf_pretok


def _spec(tokenizer: Any) -> tuple[Optional[dict], str]:
    """``tokenizer.json`` as a dict, or None and why (a slow tokenizer has none)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return None, f"{type(tokenizer).__name__} has no tokenizer.json (a slow tokenizer)"
    return json.loads(backend.to_str()), ""


def tokenizer_problems(tokenizer: Any) -> list[str]:
    """Why llama.cpp would not tokenize as ``tokenizer`` does (empty when it would, or when there is none)."""
    if tokenizer is None:
        return []
    spec, why = _spec(tokenizer)
    if spec is None:
        return [f"its tokenizer ({why}) cannot be written into GGUF; give a fast tokenizer or export as hf"]
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel" or model.get("byte_fallback"):
        return [f"its tokenizer is not a byte-level BPE ({model.get('type') or 'unknown model'}), the only kind this "
                f"exporter writes into GGUF; export as hf"]
    if gguf_pretok.pre_tokenizer_name(tokenizer, spec) is None:
        return [f"its tokenizer's pre-tokenizer ({gguf_pretok.describe(spec.get('pre_tokenizer'))}"
                f"{', after a normalizer' if spec.get('normalizer') else ''}) splits text in a way none of llama.cpp's "
                f"pre-tokenizers does, so llama.cpp would give other token ids; export as hf"]
    return []


def add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> list[str]:
    """Add the tokenizer to ``writer``; returns notes for the report (empty when all went in)."""
    import gguf

    if tokenizer is None:
        return ["no tokenizer was given, so the file has none; llama.cpp needs one (pass the tokenizer to export)."]
    problems = tokenizer_problems(tokenizer)
    if problems:  # export() checks first; a direct caller gets the same sentence
        from compress.io.exports.common import ExportError

        raise ExportError(f"This model cannot be exported as gguf: {problems[0]}.")
    spec, _ = _spec(tokenizer)
    tokens, types = _tokens(tokenizer, vocab_size, gguf.TokenType)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(gguf_pretok.pre_tokenizer_name(tokenizer, spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="compress-gguf-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=vocab_size)
    # What transformers does, not what a config claims: llama.cpp defaults to adding a BOS for BPE.
    special.add_special_token.update(_adds_bos_eos(tokenizer))
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(False)  # a byte-level BPE marks spaces inside its tokens
    return []


def _adds_bos_eos(tokenizer: Any) -> dict[str, bool]:
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    start = full.index(plain[0]) if plain and plain[0] in full else 0
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    return {"bos": start > 0 and bos is not None and full[start - 1] == bos,
            "eos": len(full) > start + len(plain) and eos is not None and full[-1] == eos}


def _tokens(tokenizer: Any, vocab_size: int, token_type: Any) -> tuple[list[str], list[int]]:
    """Every id below ``vocab_size`` with its text and type (ids the tokenizer lacks become unused pads)."""
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False)}
    user = set(getattr(tokenizer, "added_tokens_decoder", {})) - added
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in vocab:
            tokens.append(f"[PAD{i}]")
            types.append(int(token_type.UNUSED))
        else:
            tokens.append(vocab[i])
            kind = token_type.CONTROL if i in special or i in added else token_type.USER_DEFINED if i in user else token_type.NORMAL
            types.append(int(kind))
    return tokens, types
