import sys

import pytest

from compress.machine import cpu_name, process_memory_mib, reset_peak_memory


def test_cpu_name_is_a_name():
    assert isinstance(cpu_name(), str) and cpu_name().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_memory_now_and_at_the_peak_after_a_reset():
    now = process_memory_mib()
    assert now is not None and now > 1
    big = bytearray(64 * 2**20)  # touched below, so resident
    big[:: 4096] = b"x" * len(big[:: 4096])
    peak = process_memory_mib("VmHWM")
    assert peak >= now + 60
    del big
    if reset_peak_memory():  # the mark falls back to what the process holds now, without the 64 MiB freed
        assert process_memory_mib("VmHWM") <= peak - 32
    assert process_memory_mib("NoSuchField") is None
