"""Temporary directories beside a target, renames that never replace what another process made, stale leftovers.

A write goes to ``.<target>.compress-tmp-<pid>-<random>`` and a replaced
directory is moved aside to ``.<target>.compress-old-<pid>-<random>``.  A
process killed mid-write leaves such a directory; the next write to the same
target removes the ones whose process is gone and that are older than the
running process (``stale``), and ``compress-lm verify`` lists them.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

_PROCESS_START = time.time()  # anything this process makes is newer than this module
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_LIBC: Any = None
TMP, OLD = "compress-tmp", "compress-old"


def make_dir(target: Path, role: str = TMP) -> Path:
    """A new, empty directory beside ``target`` with this toolkit's name pattern, permissions from the umask."""
    while True:
        path = target.parent / f".{target.name}.{role}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)  # the umask applies, as for any directory the user creates
            return path
        except FileExistsError:
            continue


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(directory: Path) -> None:
    """Give the files under ``directory`` the mode the umask gives new files (safetensors writes them 0600)."""
    mode = 0o666 & ~current_umask()
    for p in directory.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


def spare_name(target: Path, role: str = OLD) -> Path:
    return target.parent / f".{target.name}.{role}-{os.getpid()}-{secrets.token_hex(4)}"


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                _LIBC = libc
            except (OSError, AttributeError):
                pass
    return _LIBC


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; raise FileExistsError if ``dst`` exists, never replacing it.

    Linux's renameat2(RENAME_NOREPLACE) makes the check and the rename one
    step; elsewhere (or on file systems without it) a plain rename still fails
    on a non-empty directory, and an empty one holds nothing to lose.
    """
    libc = _libc()
    if libc:
        if libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from e
        raise


_NAME = re.compile(rf"^\.(.+)\.({TMP}|{OLD})-(\d+)-[0-9a-f]{{8}}$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(target: Path) -> list[Path]:
    """Leftovers of interrupted writes to ``target``: this toolkit's pattern, their process gone, older than this one."""
    target = Path(target)
    return stale_in(target.parent, target.name)


def stale_in(folder: Path, name: str | None = None) -> list[Path]:
    """``stale`` for every target in ``folder`` (or only ``name``)."""
    found = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    for p in entries:
        m = _NAME.match(p.name)
        if not m or (name is not None and m.group(1) != name) or not p.is_dir() or p.is_symlink():
            continue
        try:
            older = p.stat().st_mtime < _PROCESS_START
        except OSError:
            continue
        if older and not _alive(int(m.group(3))):
            found.append(p)
    return sorted(found)


def remove_stale(target: Path) -> list[Path]:
    """Delete ``stale(target)``, keeping a moved-aside old copy while ``target`` itself is missing; what went."""
    gone = []
    for p in stale(target):
        if f".{OLD}-" in p.name and not target.exists():
            continue  # the only copy of the old data: a write was killed between moving it aside and renaming
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p)
    return gone
