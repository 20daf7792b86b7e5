"""Writes that never leave a half-written checkpoint or file, and file hashes.

Every file the toolkit writes goes through ``write_file`` (or its text / JSON
forms): a temporary file beside the target, renamed over it in one step, so
readers see the old file or the whole new one.

``atomic_directory`` writes into a temporary directory beside the target and
renames it into place at the end: readers see the old directory or the whole
new one.  Nothing is deleted that this process did not create or check: the
final rename never replaces a directory that appeared meanwhile, and a
directory replaced with ``overwrite=True`` is checked to be compress-lm's own
output both before and after it is moved aside (``compress.io.outputs``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from compress.io import tempdirs
from compress.io.outputs import OutputError, check_location, check_replaceable


def write_file(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it over ``path`` in one step.

    The parent directory is created; the file gets the mode the umask gives new
    files (``mkstemp`` would leave 0600).  On any error the temporary file is
    removed and ``path`` is as it was.
    """
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~tempdirs.current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` into ``path`` atomically (``write_file``)."""
    return write_file(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj: Any, indent: int = 1) -> Path:
    """``obj`` as JSON (non-JSON values through ``str``) into ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(target: Path, overwrite: bool, protect: Iterable[Path] = (),
                     needed_bytes: Optional[int] = None) -> None:
    """Refuse, before any work, an output directory that cannot or must not be written.

    A file, a path under a file, an unwritable or too full location, an
    existing directory without ``overwrite``, and with it one that is not
    compress-lm's own output or that holds a ``protect`` path (the input).
    """
    target = Path(target).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise OutputError(f"Output path '{target}' is a file; give a directory path for the checkpoint.")
    check_location(target, needed_bytes)
    if target.exists():
        if not overwrite:
            raise OutputError(
                f"Output directory '{target}' already exists; pass overwrite=True (--force on the command line) "
                f"to replace it, or choose another path."
            )
        check_replaceable(target, protect)


def _write_errors() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError
    except ImportError:
        return (OSError,)
    return (OSError, SafetensorError)


def write_failed(target: Path, err: BaseException) -> OutputError:
    """One sentence for an OS or safetensors error while writing ``target``."""
    reason = getattr(err, "strerror", None) or " ".join(str(err).split())[:200] or type(err).__name__
    return OutputError(f"Could not write '{target}' ({reason}); nothing there was changed, free space or fix the "
                       f"permissions and run again, or choose another output path.")


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False, protect: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory beside ``target`` that becomes ``target`` on success.

    On any error the temporary directory is removed and ``target`` is left as
    it was; OS and safetensors errors become one ``OutputError`` sentence.
    Stale temporary directories of interrupted writes to ``target`` are removed first.
    """
    target = Path(target).expanduser().resolve()
    protect = tuple(protect)
    check_output_dir(target, overwrite, protect)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tempdirs.remove_stale(target)
        tmp = tempdirs.make_dir(target)
    except OSError as err:
        raise write_failed(target, err) from None
    try:
        yield tmp
        _commit(tmp, target, overwrite, protect)
    except _write_errors() as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(target, err) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, target: Path, overwrite: bool, protect: tuple[Path, ...]) -> None:
    tempdirs.follow_umask(tmp)
    if not os.path.lexists(target):
        try:
            tempdirs.rename_noreplace(tmp, target)
            return
        except FileExistsError:
            pass  # it appeared while we wrote
    if not overwrite:
        raise OutputError(f"Output directory '{target}' appeared while compress-lm was writing it and was left as it is; "
                          f"choose another path, or pass overwrite=True (--force) to replace it.")
    check_replaceable(target, protect)  # again: it may have changed since the check before the work
    backup = tempdirs.spare_name(target)
    os.rename(target, backup)  # to a fresh unique name: replaces nothing
    try:
        check_replaceable(backup)  # what was moved is still the output checked above, not a substitute
    except OutputError:
        _put_back(backup, target)
        raise OutputError(f"Output directory '{target}' changed while compress-lm was writing and was left as it is; "
                          f"run again.") from None
    try:
        tempdirs.rename_noreplace(tmp, target)
    except FileExistsError:
        raise OutputError(f"Output directory '{target}' appeared again while compress-lm was replacing it; the previous "
                          f"contents are in '{backup}', move them back and run again.") from None
    except OSError:
        _put_back(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _put_back(backup: Path, target: Path) -> None:
    try:
        tempdirs.rename_noreplace(backup, target)
    except OSError:
        raise OutputError(f"Output directory '{target}' changed while compress-lm was writing; its previous contents "
                          f"are in '{backup}', move them back.") from None
