"""Giving back replaced float weights: mapped checkpoint pages are dropped, nothing readable changes."""
import copy
import mmap
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compress.quantization import QuantConfig, quantize
from compress.quantization.memory import release_freed_memory, release_pages

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and madvise")


def resident_file_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


def resident_pages(t: torch.Tensor) -> int:
    """Pages of ``t`` this process has in memory (/proc/self/pagemap, bit 63)."""
    page = mmap.PAGESIZE
    first, n = t.data_ptr() // page, -(-(t.data_ptr() + t.nbytes) // page) - t.data_ptr() // page
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        return sum(e >> 63 for e in struct.unpack(f"{n}Q", f.read(n * 8)))


@pytest.fixture
def mapped(tmp_path):
    """Two 16 MiB weights loaded the way transformers loads a checkpoint: mapped from the file."""
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(2048, 2048), "b": torch.randn(2048, 2048)}, str(path))
    return load_file(str(path)), path


@linux_only
def test_unmodified_mapped_pages_are_dropped_and_read_back_unchanged(mapped):
    tensors, path = mapped
    a = tensors["a"]
    want = a.clone()  # reading it makes every page resident
    before = resident_file_mib()
    released = release_pages(a)
    assert released >= a.nbytes - 2 * 4096  # all but the partial pages at both ends
    assert resident_file_mib() < before - 12
    assert torch.equal(a, want)  # faulted back in from the file


@linux_only
def test_written_pages_and_ordinary_memory_are_left_alone(mapped):
    tensors, _ = mapped
    b = tensors["b"]
    b[:1024].add_(1.0)  # copy-on-write: the first half now lives in anonymous memory
    want = b.clone()
    released = release_pages(b)
    assert 0 < released <= b.nbytes // 2 + 4096  # only the untouched half
    assert torch.equal(b, want)  # the written values survive
    plain = torch.randn(1024, 1024)
    copy = plain.clone()
    assert release_pages(plain) == 0 and torch.equal(plain, copy)
    assert release_pages(plain[:, ::2]) == 0  # not contiguous: skipped
    release_freed_memory()  # harmless at any time


@linux_only
def test_quantize_gives_back_the_mapped_weights_it_replaced(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(1024, 1024, bias=False) for _ in range(4)])
    in_memory = copy.deepcopy(model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    model.load_state_dict(load_file(str(tmp_path / "m.safetensors")), assign=True)  # weights now map the file
    with torch.no_grad():
        model(torch.randn(2, 1024))
    weights = [m.weight for m in model]  # kept only to look at their pages afterwards
    assert all(resident_pages(w) >= 1024 for w in weights)  # the forward read all 4 MiB of each
    quantize(model, QuantConfig(group_size=128, progress=False))
    assert all(resident_pages(w) <= 2 for w in weights)  # at most the pages shared with a neighbour
    quantize(in_memory, QuantConfig(group_size=128, progress=False))
    for mapped_module, plain in zip(model, in_memory):  # the same packed weights either way
        assert torch.equal(mapped_module.qweight, plain.qweight) and torch.equal(mapped_module.scales, plain.scales)
