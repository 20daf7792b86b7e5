"""Where compress-lm may write: what it may replace, and whether a location can take the bytes.

A directory is compress-lm's own when its manifest says so: ``compress.json``
(a checkpoint), ``compress-export.json`` (an export), ``run.json`` (a run) or
``state.json`` (a training checkpoint) or ``topk.json`` (a teacher's top-k).
Only such a directory is ever replaced, and only when every file in it is one
the manifest lists (or a file the toolkit writes beside it, ``stage.json``)
and it does not hold the model being compressed: anything else is a user's
data, and the refusal says why.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from compress.errors import CompressError

CHECKPOINT_MANIFEST = "compress.json"
EXPORT_MANIFEST = "compress-export.json"
RUN_MANIFEST = "run.json"  # compress.pipeline.rundir.RUN_FILE
TRAINING_MANIFEST = "state.json"  # compress.recovery.state.STATE: one training checkpoint
TEACHER_MANIFEST = "topk.json"  # compress.recovery.teacher.INDEX: a teacher's precomputed top-k
COMPANIONS = frozenset({"stage.json"})  # the run's record, written beside a stage's checkpoint
FREE_SPACE_MARGIN = 1.1  # estimates are rough; keep some room


class OutputError(CompressError):
    """An output location compress-lm will not write to, or a write that failed."""


def kind(directory: Path) -> Optional[str]:
    """``checkpoint``, ``export`` or ``run`` when ``directory`` carries that manifest, else None."""
    for name, what in ((CHECKPOINT_MANIFEST, "checkpoint"), (EXPORT_MANIFEST, "export"), (RUN_MANIFEST, "run"),
                       (TRAINING_MANIFEST, "training state"), (TEACHER_MANIFEST, "teacher top-k")):
        if (directory / name).is_file():
            return what
    return None


def listed_files(directory: Path, manifest_name: str) -> Optional[set[str]]:
    """The file names a manifest lists (itself included), or None when it cannot be read."""
    try:
        data = json.loads((directory / manifest_name).read_text())
    except (OSError, ValueError):
        return None
    files = (data.get("files") or data.get("shards")) if isinstance(data, dict) else None
    if not isinstance(files, (dict, list)):
        return None
    return {str(f) for f in files} | {manifest_name}


def _is_within(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


def check_replaceable(target: Path, protect: Iterable[Path] = ()) -> None:
    """Refuse, with the reason, to replace ``target`` unless it is a compress-lm checkpoint or export
    holding only its own files and none of the ``protect`` paths (the input model)."""
    if not any(target.iterdir()):
        return  # an empty directory holds nothing to lose
    for p in protect:
        if _is_within(Path(p), target):
            raise OutputError(
                f"Output directory '{target}' holds the input model '{p}'; --force never replaces it, write to "
                f"another directory."
            )
    what = kind(target)
    manifest = {"checkpoint": CHECKPOINT_MANIFEST, "export": EXPORT_MANIFEST,
                "training state": TRAINING_MANIFEST, "teacher top-k": TEACHER_MANIFEST}.get(what or "")
    if manifest is None:
        reason = "it is a compress-lm run (use compress-lm run to replace it)" if what == "run" else \
            f"it is not a compress-lm checkpoint or export (no {CHECKPOINT_MANIFEST} or {EXPORT_MANIFEST})"
        raise OutputError(f"Output directory '{target}' exists and {reason}; --force replaces only compress-lm's own "
                          f"outputs, so choose another directory or empty it yourself.")
    listed = listed_files(target, manifest)
    if listed is None:
        raise OutputError(f"Output directory '{target}' has an unreadable {manifest}; --force will not replace it, "
                          f"choose another directory or remove it yourself.")
    unrelated = sorted(p.name for p in target.iterdir() if p.name not in listed | COMPANIONS or not p.is_file())
    if unrelated:
        shown = ", ".join(unrelated[:4]) + (f" and {len(unrelated) - 4} more" if len(unrelated) > 4 else "")
        raise OutputError(f"Output directory '{target}' holds files its {manifest} does not list ({shown}); --force "
                          f"will not delete them, move them out or choose another directory.")


def check_location(path: Path, needed_bytes: Optional[int] = None) -> None:
    """Refuse a path that cannot be created or written: under a file, not writable, or short of space.

    ``path`` itself need not exist; its first existing ancestor is checked.
    """
    path = Path(path).expanduser().absolute()
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"Output path '{path}' lies under '{ancestor}', which is a file; choose a path in a directory.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot write to '{ancestor}' (permission denied or read-only); choose an output path you "
                          f"can write to.")
    if needed_bytes:
        free = shutil.disk_usage(ancestor).free
        if free < needed_bytes * FREE_SPACE_MARGIN:
            raise OutputError(
                f"'{ancestor}' has {_size(free)} free but the output needs about {_size(needed_bytes)}; free some space "
                f"or choose another output path."
            )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def input_paths(model: object) -> tuple[Path, ...]:
    """The local directory or file ``model`` was loaded from, if any: a write must never replace it."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    if not name:
        return ()
    try:
        path = Path(str(name)).expanduser()
        return (path,) if path.exists() else ()
    except (OSError, ValueError):
        return ()


def estimated_bytes(model: object, linear_bits: Optional[float] = None) -> int:
    """Roughly what a checkpoint of ``model`` takes on disk; ``linear_bits``: the bits per weight quantisation will
    leave in the decoder layers' linears (scales included), None to keep them as they are."""
    from torch import nn

    from compress.sizes import bytes_on_disk

    total = bytes_on_disk(model)  # type: ignore[arg-type]
    if linear_bits is not None:
        from compress.io.exports.common import layer_linear_names

        for name in layer_linear_names(model):  # type: ignore[arg-type]
            lin = model.get_submodule(name)  # type: ignore[attr-defined]
            if isinstance(lin, nn.Linear):
                total -= lin.weight.nbytes - int(lin.weight.numel() * linear_bits / 8)
    return max(total, 0)
