"""What this machine is and what this process holds: for reports and benchmarks (Linux /proc; None elsewhere)."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def process_memory_mib(field: str = "VmRSS") -> Optional[float]:
    """This process's resident memory now (``VmRSS``) or at its peak since the last reset (``VmHWM``), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_memory() -> bool:
    """Reset the peak-memory mark (VmHWM, and ru_maxrss with it) to the current RSS; False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
