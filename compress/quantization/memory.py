"""Give back the memory of float weights that quantisation has replaced.

transformers maps a safetensors checkpoint into memory instead of reading it,
so a weight becomes resident when it is first read and stays resident while
the file stays mapped (the tied embeddings keep it mapped): quantising layer
after layer would end with every replaced float weight still counted in the
process's memory.  ``release_pages(weight)`` drops the pages of a weight that
are still unmodified file pages (``madvise(MADV_DONTNEED)``; a later read
would fault the same bytes back in from the file), so nothing anyone can
still read changes.  Pages that were written since loading (copy-on-write,
now anonymous memory) and weights in ordinary memory are left alone.

``release_freed_memory()`` asks glibc to return freed heap memory: after large
frees it raises its mmap threshold, so tensors of a few MB come from the heap,
whose free gaps it keeps.  Both are Linux-only and do nothing elsewhere.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
import sys
from typing import Any

import torch

_MADV_DONTNEED = 4
_PRESENT = 1 << 63  # /proc/self/pagemap: the page is in memory
_FILE_PAGE = 1 << 61  # ... and is a file page (or shared anonymous), not private anonymous memory

_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6", use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _LIBC = libc
            except (OSError, AttributeError):
                pass
    return _LIBC


def release_pages(tensor: torch.Tensor) -> int:
    """Drop the unmodified file-backed pages lying wholly inside ``tensor`` from this process; return their bytes."""
    libc = _libc()
    if not libc or tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.numel() == 0:
        return 0
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    first = -(-start // page) * page  # whole pages only: the neighbours' bytes are never touched
    last = (start + tensor.numel() * tensor.element_size()) // page * page
    n = (last - first) // page
    if n <= 0:
        return 0
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(first // page * 8)
            entries = struct.unpack(f"{n}Q", f.read(n * 8))
    except (OSError, struct.error):
        return 0
    released, run_start = 0, None
    for i, entry in enumerate((*entries, 0)):  # the trailing 0 closes the last run
        droppable = entry & _PRESENT and entry & _FILE_PAGE
        if droppable and run_start is None:
            run_start = i
        elif not droppable and run_start is not None:
            length = (i - run_start) * page
            if libc.madvise(first + run_start * page, length, _MADV_DONTNEED) == 0:
                released += length
            run_start = None
    return released


def release_freed_memory() -> None:
    """Return memory freed to glibc's heap to the OS (``malloc_trim``)."""
    libc = _libc()
    if libc:
        libc.malloc_trim(0)
