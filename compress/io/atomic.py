"""Writes that never leave a half-written checkpoint, and file hashes."""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compress.errors import CompressError


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(target: Path, overwrite: bool) -> None:
    """Refuse to replace an existing path unless told to."""
    if target.is_file():
        raise CompressError(f"Output path '{target}' is a file; give a directory path for the checkpoint.")
    if target.exists() and not overwrite:
        raise CompressError(
            f"Output directory '{target}' already exists; pass overwrite=True (--force on the command line) "
            f"to replace it, or choose another path."
        )


@contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target`` that becomes ``target`` on success.

    On any error the temporary directory is removed and ``target`` is left as
    it was.  An existing ``target`` (with ``overwrite``) is moved aside first and
    deleted only after the new one is in place.
    """
    target = Path(target).expanduser().resolve()
    check_output_dir(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        backup = None
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            backup.rmdir()
            target.rename(backup)
        tmp.rename(target)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
