"""``compress.json``: what a checkpoint holds and how to check it.

Keys: ``format_version``; ``compress_version``; ``family`` and
``architectures``; ``methods`` (every compression step with its config, in
order); ``layer_widths`` (per-layer heads, kv heads, MLP width);
``quantized_modules`` (module name -> the QuantLinear description needed to
rebuild it empty); ``tied`` (alias tensor name -> stored name); ``files``
(file name -> sha256 and bytes, for every other file in the directory).
Version 2 adds ``dtype`` (the dtype float tensors are stored in, see
``compress.io.storage``; version-1 checkpoints stored float32) and
``quantized_embeddings`` (module name -> the QuantEmbedding description;
``tied_head`` names an output head that shares its packed data).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.io import schema

FORMAT_VERSION = 2
MANIFEST = "compress.json"


class CheckpointError(CompressError):
    """A checkpoint that is missing, truncated, tampered with or inconsistent."""


@dataclass
class Manifest:
    format_version: int = FORMAT_VERSION
    compress_version: str = ""
    family: str | None = None
    architectures: list[str] = field(default_factory=list)
    methods: list[dict[str, Any]] = field(default_factory=list)
    layer_widths: dict[str, Any] | None = None
    quantized_modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    dtype: str = "float32"  # absent from version 1, which stored float32
    quantized_embeddings: dict[str, dict[str, Any]] = field(default_factory=dict)
    tied_head: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        path = directory / MANIFEST
        if not path.is_file():
            raise CheckpointError(
                f"'{directory}' is not a compress-lm checkpoint (it has no {MANIFEST}); load plain HF "
                f"directories with compress.load_model."
            )
        try:
            data = json.loads(path.read_text())
        except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
            raise CheckpointError(f"'{path}' is not valid JSON ({schema.short(str(err), 120)}); the checkpoint is corrupted, "
                                  f"save it again.") from None
        except OSError as err:
            raise CheckpointError(f"'{path}' cannot be read ({err.strerror}); check its permissions.") from None
        if isinstance(data, dict) and _is_version(data.get("format_version")) and data["format_version"] > FORMAT_VERSION:
            raise CheckpointError(
                f"'{directory}' was written in checkpoint format {data['format_version']}, newer than the "
                f"{FORMAT_VERSION} this compress-lm reads; upgrade compress-lm to load it."
            )
        bad = schema.problem(data)
        if bad is not None:
            field_name, why = bad
            raise CheckpointError(f"'{path}' field {field_name} {why}; the checkpoint is corrupted or was edited, save it again.")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _is_version(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
