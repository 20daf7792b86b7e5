"""The schema of ``compress.json``: every field's type and range, checked before any of it is used.

``problem(data)`` returns the first violation as ``(field, what is wrong)``,
or None; ``Manifest.read`` turns it into one ``CheckpointError`` naming the
file and the field.  Quoted values are cut to a few dozen characters.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

from compress.errors import quote

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_WIDTH_KEYS = ("num_heads", "num_kv_heads", "mlp_width")
_QUANT_KEYS = {"in_features", "out_features", "method", "group_size", "symmetric", "per_channel", "activations",
               "bias", "scale_dtype"}
_SCALE_DTYPES = ("float16", "bfloat16", "float32")

Problem = Optional[tuple[str, str]]


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (never builds the whole repr of a huge value)."""
    return quote(value, limit)


def is_int(x: Any, low: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def mapping_of(value: Any, field: str, check: Callable[[str, Any], Optional[str]]) -> Problem:
    if not isinstance(value, dict):
        return field, f"must be a mapping, got {type(value).__name__}"
    for key, item in value.items():
        why = check(key, item)
        if why:
            return f"{field}[{short(key)}]", why
    return None


def file_entry(name: str, meta: Any) -> Optional[str]:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return "is not a plain file name in the checkpoint directory"
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not _SHA256.match(meta["sha256"]):
        return "must have a sha256 of 64 hex digits"
    if not is_int(meta.get("bytes")):
        return f"must have bytes, an integer >= 0, got {short(meta.get('bytes'))}"
    return None


def _quant_entry(name: str, spec: Any) -> Optional[str]:
    if not isinstance(spec, dict):
        return f"must be a mapping of QuantLinear options, got {type(spec).__name__}"
    unknown = set(spec) - _QUANT_KEYS
    if unknown:
        return f"has unknown key(s) {short(sorted(map(str, unknown)))}"
    for key in ("in_features", "out_features"):
        if not is_int(spec.get(key), 1):
            return f"{key} must be an integer >= 1, got {short(spec.get(key))}"
    if spec.get("method", "int4") not in ("int4", "int3", "ternary"):
        return f"method must be int4, int3 or ternary, got {short(spec.get('method'))}"
    g = spec.get("group_size")
    if g is not None and not (is_int(g, 1) or g == -1):
        return f"group_size must be an integer >= 1, -1 or null, got {short(g)}"
    for key in ("symmetric", "per_channel", "bias"):
        if key in spec and not isinstance(spec[key], bool):
            return f"{key} must be true or false, got {short(spec[key])}"
    if spec.get("activations", "a16") not in ("a16", "a8"):
        return f"activations must be a16 or a8, got {short(spec.get('activations'))}"
    if spec.get("scale_dtype", "float16") not in _SCALE_DTYPES:
        return f"scale_dtype must be one of {', '.join(_SCALE_DTYPES)}, got {short(spec.get('scale_dtype'))}"
    return None


_EMBED_KEYS = {"num_embeddings", "embedding_dim", "bits", "group_size", "padding_idx", "scale_dtype", "role",
               "embed_scale"}


def _embedding_entry(name: str, spec: Any) -> Optional[str]:
    if not isinstance(spec, dict):
        return f"must be a mapping of QuantEmbedding options, got {type(spec).__name__}"
    unknown = set(spec) - _EMBED_KEYS
    if unknown:
        return f"has unknown key(s) {short(sorted(map(str, unknown)))}"
    for key in ("num_embeddings", "embedding_dim", "group_size"):
        if not is_int(spec.get(key), 1):
            return f"{key} must be an integer >= 1, got {short(spec.get(key))}"
    if spec.get("bits") not in (4, 8):
        return f"bits must be 4 or 8, got {short(spec.get('bits'))}"
    if spec["embedding_dim"] % spec["group_size"] or (spec["bits"] == 4 and spec["embedding_dim"] % 2):
        return f"group_size {spec['group_size']} does not divide embedding_dim {spec['embedding_dim']}"
    if spec.get("role", "embedding") not in ("embedding", "head"):
        return f"role must be embedding or head, got {short(spec.get('role'))}"
    es = spec.get("embed_scale")
    if es is not None and (not isinstance(es, (int, float)) or isinstance(es, bool)):
        return f"embed_scale must be a number or null, got {short(es)}"
    p = spec.get("padding_idx")
    if p is not None and not isinstance(p, int):
        return f"padding_idx must be an integer or null, got {short(p)}"
    if spec.get("scale_dtype", "float16") not in _SCALE_DTYPES:
        return f"scale_dtype must be one of {', '.join(_SCALE_DTYPES)}, got {short(spec.get('scale_dtype'))}"
    return None


def _widths(value: Any) -> Problem:
    if value is None:
        return None
    if not isinstance(value, dict):
        return "layer_widths", f"must be a mapping or null, got {type(value).__name__}"
    lengths = set()
    for key in _WIDTH_KEYS:
        v = value.get(key)
        if not isinstance(v, list) or not all(is_int(x) for x in v):
            return f"layer_widths.{key}", f"must be a list of integers >= 0, got {short(v)}"
        lengths.add(len(v))
    if len(lengths) > 1:
        return "layer_widths", f"lists of different lengths ({', '.join(f'{k} {len(value[k])}' for k in _WIDTH_KEYS)})"
    return None


def problem(data: Any) -> Problem:
    """The first field of a parsed ``compress.json`` that breaks the schema, with what is wrong; None if none."""
    if not isinstance(data, dict):
        return "(top level)", f"must be a JSON object, got {type(data).__name__}"
    v = data.get("format_version")
    if not is_int(v, 1):
        return "format_version", f"must be an integer >= 1, got {short(v)}"
    if not isinstance(data.get("compress_version", ""), str):
        return "compress_version", "must be a string"
    if data.get("family") is not None and not isinstance(data["family"], str):
        return "family", f"must be a string or null, got {short(data['family'])}"
    for key, kind in (("architectures", str), ("methods", dict)):
        items = data.get(key, [])
        if not isinstance(items, list) or not all(isinstance(x, kind) for x in items):
            return key, f"must be a list of {'strings' if kind is str else 'mappings'}, got {short(items)}"
    if data.get("dtype", "float32") not in _SCALE_DTYPES:
        return "dtype", f"must be one of {', '.join(_SCALE_DTYPES)}, got {short(data.get('dtype'))}"
    head = data.get("tied_head")
    if head is not None and (not isinstance(head, str) or not head):
        return "tied_head", f"must name the output head or be null, got {short(head)}"
    checks = (
        _widths(data.get("layer_widths")),
        mapping_of(data.get("quantized_modules", {}), "quantized_modules", _quant_entry),
        mapping_of(data.get("quantized_embeddings", {}), "quantized_embeddings", _embedding_entry),
        mapping_of(data.get("tied", {}), "tied",
                    lambda k, v: None if isinstance(v, str) and v else f"must name a stored tensor, got {short(v)}"),
        mapping_of(data.get("files", {}), "files", file_entry),
    )
    return next((c for c in checks if c), None)
