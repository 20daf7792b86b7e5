"""Checks shared by checkpoints (``compress.json``) and exports (``compress-export.json``).

Every listed file must be there with its size and sha256, and no file that
transformers would read may sit in the directory unlisted: an
``added_tokens.json`` or ``chat_template.jinja`` dropped in beside the
weights would change the tokenizer without a word.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from compress.errors import CompressError
from compress.io.atomic import sha256_file
from compress.io.outputs import COMPANIONS

# What transformers' config, model and tokenizer loaders may read from a directory.
READ_BY_TRANSFORMERS = (".json", ".jinja", ".py", ".safetensors", ".bin", ".model", ".txt", ".tiktoken", ".gguf",
                        ".pt", ".pth", ".msgpack", ".h5", ".ckpt", ".vocab", ".spm", ".npz", ".pkl")


def check_listed(directory: Path, files: dict[str, dict[str, Any]], manifest: str, verify: bool,
                 error: type[CompressError]) -> None:
    """Every file ``manifest`` lists is present with its recorded size and (with ``verify``) sha256."""
    for name, meta in files.items():
        f = directory / name
        if not f.is_file():
            raise error(f"'{directory}' is missing {name}, which {manifest} lists; it was truncated or moved, "
                        f"write it again.")
        if f.stat().st_size != meta.get("bytes"):
            raise error(f"{f} has {f.stat().st_size} bytes but {manifest} recorded {meta.get('bytes')}; the file is "
                        f"truncated or was changed, write it again.")
        if verify and sha256_file(f) != meta.get("sha256"):
            raise error(f"{f} does not match the sha256 in {manifest}; the file was corrupted or changed, write it again.")


def unlisted(directory: Path, files: dict[str, Any], manifest: str) -> list[str]:
    """Names in ``directory`` that transformers could read but ``manifest`` does not list."""
    known = set(files) | {manifest} | COMPANIONS
    out = []
    for p in sorted(directory.iterdir()):
        if p.name in known or p.name.startswith("."):
            continue
        if p.is_dir() or p.suffix.lower() in READ_BY_TRANSFORMERS:
            out.append(p.name + ("/" if p.is_dir() else ""))
    return out


def check_unlisted(directory: Path, files: dict[str, Any], manifest: str, error: type[CompressError]) -> None:
    extra = unlisted(directory, files, manifest)
    if extra:
        shown = ", ".join(extra[:4]) + (f" and {len(extra) - 4} more" if len(extra) > 4 else "")
        raise error(f"'{directory}' holds {shown}, which {manifest} does not list and transformers would read; "
                    f"remove it, or write the directory again with it included.")


def read_export_manifest(directory: Path, error: type[CompressError]) -> dict[str, Any]:
    """``compress-export.json``, checked: ``files`` maps plain names to sha256 and bytes."""
    from compress.io import schema
    from compress.io.outputs import EXPORT_MANIFEST

    path = directory / EXPORT_MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise error(f"'{path}' cannot be read as JSON ({schema.short(str(err), 120)}); write the export again.") from None
    bad: Optional[tuple[str, str]] = None
    if not isinstance(data, dict):
        bad = ("(top level)", f"must be a JSON object, got {type(data).__name__}")
    elif not schema.is_int(data.get("format_version"), 1):
        bad = ("format_version", f"must be an integer >= 1, got {schema.short(data.get('format_version'))}")
    else:
        bad = schema.mapping_of(data.get("files"), "files", schema.file_entry)
    if bad:
        raise error(f"'{path}' field {bad[0]} {bad[1]}; the export is corrupted or was edited, write it again.")
    return data


def write_export_manifest(directory: Path, fmt: str) -> Path:
    """``compress-export.json``: marks the directory as compress-lm's export and lists every file's sha256."""
    from compress import __version__
    from compress.io.outputs import EXPORT_MANIFEST

    files = {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
             for f in sorted(directory.iterdir()) if f.is_file() and f.name != EXPORT_MANIFEST}
    path = directory / EXPORT_MANIFEST
    data = {"format_version": 1, "format": fmt, "compress_version": __version__, "files": files}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
