"""The registry of packed formats: ``FORMATS[name]`` / ``get_format(name)`` -> the format's class.

Strings stay at the edges (configs, JSON, the command line, manifests); code
in between asks the class.  ``linear_format`` and ``embedding_format`` build
the instance one module stores from those strings.
"""
from __future__ import annotations

from typing import Optional, Union

from .linear import Int3Format, Int4Format, LinearFormat, TernaryA8Format, TernaryFormat
from .rows import Int4RowsFormat, Int8RowsFormat, RowFormat

__all__ = ["FORMATS", "LINEAR_FORMATS", "ROW_FORMATS", "Format", "get_format", "linear_format", "embedding_format",
           "shape_problem"]

Format = Union[LinearFormat, RowFormat]

FORMATS: dict[str, type] = {f.name: f for f in (Int4Format, Int3Format, TernaryFormat, TernaryA8Format,
                                                Int8RowsFormat, Int4RowsFormat)}
LINEAR_FORMATS = tuple(n for n, f in FORMATS.items() if f.kind == "linear")  # what quant_matmul takes
ROW_FORMATS = tuple(n for n, f in FORMATS.items() if f.kind == "embedding")
_NAMES = {None: tuple(FORMATS), "linear": LINEAR_FORMATS, "embedding": ROW_FORMATS}


def get_format(name: str, kind: Optional[str] = None) -> type:
    """The class of the packed format ``name`` (of ``kind`` "linear" or "embedding", when given)."""
    names = _NAMES[kind]
    if name not in names:
        raise ValueError(f"unknown packed format {name!r}; use one of {', '.join(names)}.")
    return FORMATS[name]


def shape_problem(fmt: str, N: int, K: int, group_size: Optional[int] = 128) -> Optional[str]:
    """Return why a ``[N, K]`` weight cannot use ``fmt`` ("int4", "int3" or "ternary"), or None if it can.

    Quantisers call this for every layer before touching a weight, so one
    message can list every offending module.
    """
    if fmt not in (Int4Format.name, Int3Format.name, TernaryFormat.name):
        return f"unknown packed format {fmt!r}; use 'int4', 'int3' or 'ternary'."
    return FORMATS[fmt].shape_problem(N, K, group_size)


def linear_format(method: str = "int4", *, group_size: Optional[int] = 128, K: Optional[int] = None,
                  symmetric: bool = True, per_channel: bool = False, activations: str = "a16") -> LinearFormat:
    """The layout of one packed linear module from its config strings (``group_size`` -1 or None: K, per channel)."""
    for cls in (Int4Format, Int3Format):
        if method == cls.method:
            return cls(group_size=K if group_size in (-1, None) else group_size, symmetric=symmetric)
    if method == TernaryFormat.method:
        cls = TernaryA8Format if activations == TernaryA8Format.activations else TernaryFormat
        return cls(per_channel=per_channel)
    raise ValueError(f"unknown packed method {method!r}; use 'int4', 'int3' or 'ternary'.")


def embedding_format(kind: str, group_size: Optional[int], D: int) -> RowFormat:
    """The row layout of one quantised table of width ``D`` from the config value (``"int8"`` / ``"int4"``)."""
    for cls in (Int8RowsFormat, Int4RowsFormat):
        if cls.config_name == kind:
            return cls(group_size=cls.resolve_group_size(D, group_size))
    raise ValueError(f"unknown embedding format {kind!r}; use 'int8' or 'int4'.")
