"""Which of llama.cpp's pre-tokenizers (``tokenizer.ggml.pre``) splits text as a Hugging Face tokenizer does.

llama.cpp does not run a tokenizer's own pre-tokenizer: it has a fixed list
of regex sets, named in the GGUF file.  Its converter (convert_hf_to_gguf.py)
picks the name by tokenizing one fixed string and hashing the ids; the same
string and the hashes of the tokenizers this exporter meets are below.  A
tokenizer whose hash is not listed is matched by the structure of its
``tokenizer.json`` pre-tokenizer against the few llama.cpp regex sets that
are the same split (llama.cpp's src/llama-vocab.cpp):

- ``gpt-2``: GPT-2's regex alone (ByteLevel with its regex).
- ``smollm`` (= starcoder): every digit apart, then GPT-2's regex.
- ``llama-bpe``: Llama 3's Split regex, then ByteLevel without a regex.
- ``qwen2``: Qwen2's Split regex, then ByteLevel without a regex.

Anything else is refused: a wrong name silently changes the token ids.
"""
from __future__ import annotations

from hashlib import sha256
from typing import Any, Optional

# convert_hf_to_gguf.py's probe string (its get_vocab_base_pre), byte for byte.
PROBE = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 '
         '3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
         '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
         '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')

# sha256 of str(tokenizer.encode(PROBE)) -> llama.cpp pre-tokenizer (hashes from convert_hf_to_gguf.py).
KNOWN_HASHES = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
}

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
_BYTE_LEVEL = ("ByteLevel", False, True)  # (type, add_prefix_space, use_regex)
_BYTE_LEVEL_NO_REGEX = ("ByteLevel", False, False)
_STRUCTURES = {
    (_BYTE_LEVEL,): "gpt-2",
    (("Digits", True), _BYTE_LEVEL): "smollm",
    (("Split", _LLAMA3_SPLIT, "Isolated", False), _BYTE_LEVEL_NO_REGEX): "llama-bpe",
    (("Split", _QWEN2_SPLIT, "Isolated", False), _BYTE_LEVEL_NO_REGEX): "qwen2",
}


def probe_hash(tokenizer: Any) -> str:
    return sha256(str(tokenizer.encode(PROBE)).encode()).hexdigest()


def pre_tokenizer_name(tokenizer: Any, spec: dict) -> Optional[str]:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or None when none of its splits is the same.

    ``spec`` is the tokenizer's ``tokenizer.json`` as a dict.
    """
    known = KNOWN_HASHES.get(probe_hash(tokenizer))
    if known:
        return known
    if spec.get("normalizer"):  # llama.cpp normalises nothing before a BPE split
        return None
    return _STRUCTURES.get(structure(spec.get("pre_tokenizer")))


def structure(pre: Optional[dict]) -> tuple:
    """A pre-tokenizer as a tuple of the parts that decide the split (offsets and trimming do not)."""
    if not pre:
        return ()
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    out = []
    for p in steps or []:
        kind = p.get("type")
        if kind == "ByteLevel":
            out.append((kind, bool(p.get("add_prefix_space")), bool(p.get("use_regex", True))))
        elif kind == "Digits":
            out.append((kind, bool(p.get("individual_digits"))))
        elif kind == "Split":
            pattern = p.get("pattern") or {}
            out.append((kind, pattern.get("Regex", pattern.get("String")), p.get("behavior"), bool(p.get("invert"))))
        else:
            out.append((kind,))
    return tuple(out)


def describe(pre: Optional[dict]) -> str:
    """Short words for a pre-tokenizer, for messages."""
    parts = structure(pre)
    if not parts:
        return "none"
    return " then ".join(p[0] + ("" if len(p) == 1 else f"{list(p[1:])}") for p in parts)
