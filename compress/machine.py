"""What this machine is and what this process holds: for reports and benchmarks (Linux /proc; None elsewhere)."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch


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


def check_device(name: object, what: str = "--device") -> torch.device:
    """``name`` as a torch device, refused in one sentence when it is not a device or not on this machine."""
    import torch

    from compress.errors import CompressError

    text = f"{what} {str(name)[:60]!r}"
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError, TypeError):
        raise CompressError(f"{text} is not a torch device; use cpu, cuda or cuda:N.") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CompressError(f"{text} asks for CUDA but this machine has no usable CUDA GPU; use cpu.")
        if device.index is not None and device.index >= count:
            raise CompressError(f"{text} names GPU {device.index} but this machine has {count} (cuda:0 to "
                                f"cuda:{count - 1}); choose one of those.")
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise CompressError(f"{text} is not available on this machine; use cpu" +
                        (" or cuda." if torch.cuda.is_available() else "."))


def cpu_bf16() -> bool:
    """True when this CPU multiplies bfloat16 natively (AMX-BF16 or AVX512-BF16), so bf16 autocast speeds training up;
    elsewhere oneDNN emulates it and fp32 is faster."""
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.13
    if capabilities is None:
        return False
    try:
        caps = capabilities()
    except Exception:  # noqa: BLE001 - a probe: no answer means no bf16
        return False
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def native_bf16(device: "torch.device") -> bool:
    """Whether bf16 arithmetic is worth choosing on ``device``: a CUDA GPU, or a CPU with AMX / AVX512-BF16.

    The one answer behind every "auto" precision (training's ``uses_bf16``, GPTQ's ``calibration_dtype``)."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16())


def uses_bf16(precision: str, device: "torch.device") -> bool:
    """Whether training at ``precision`` ("auto", "bf16", "fp32") runs under bf16 autocast on ``device``."""
    if precision == "bf16":
        return True
    if precision != "auto":
        return False
    return native_bf16(device)
