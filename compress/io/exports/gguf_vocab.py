"""The tokenizer inside a GGUF file (``tokenizer.ggml.*``), which llama.cpp requires.

Written for byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and Qwen
use): tokens, token types, merges and special token ids, as llama.cpp's
convert_hf_to_gguf.py writes them.  The pre-tokenizer name
(``tokenizer.ggml.pre``) is llama.cpp's own list keyed by tokenizer hashes;
it is written as ``default`` and said so in the report.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> list[str]:
    """Add the tokenizer to ``writer``; returns notes for the report (empty when all went in)."""
    import gguf

    if tokenizer is None:
        return ["no tokenizer was given, so the file has none; llama.cpp needs one (pass the tokenizer to export)."]
    with tempfile.TemporaryDirectory(prefix="compress-gguf-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        spec = Path(tmp) / "tokenizer.json"
        model = json.loads(spec.read_text()) if spec.is_file() else {}
        kind = (model.get("model") or {}).get("type")
        decoder = (model.get("decoder") or {}).get("type")
        if kind != "BPE" or decoder != "ByteLevel" or (model.get("model") or {}).get("byte_fallback"):
            return [f"the tokenizer is not a byte-level BPE ({kind or 'no tokenizer.json'}), which is the only kind "
                    f"this exporter writes into GGUF; the file has no tokenizer, so llama.cpp cannot run it as is."]
        tokens, types = _tokens(tokenizer, vocab_size, gguf.TokenType)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        gguf.SpecialVocab(tmp, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)
    return ["tokenizer.ggml.pre is 'default': llama.cpp picks a model's pre-tokenizer by hashing its "
            "tokenizer in convert_hf_to_gguf.py, which this exporter does not copy."]


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
