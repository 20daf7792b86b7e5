"""Checks shared by the int4 exports (gptq, compressed-tensors): only packed int4 weights with integer zero points."""
from __future__ import annotations

import torch
from torch import nn

from compress.io.exports.common import quantized_modules, short_list
from compress.kernels.formats import Int4Format


def int4_problems(model: nn.Module, fmt: str) -> list[str]:
    packed = quantized_modules(model)
    if not packed:
        return [f"the model has no int4 weights; export does not quantise by itself (it would have to choose a group "
                f"size and calibration for you), so quantise it first: compress-lm quantize MODEL --method int4 "
                f"--group-size 128 [--gptq], then export the result as {fmt}"]
    out: list[str] = []
    ternary = [n for n, m in packed.items() if not isinstance(m.format, Int4Format)]
    if ternary:
        out.append(f"{short_list(ternary)} hold ternary weights, which {fmt} does not store; export ternary models "
                   f"as bitnet or gguf")
    fractional = [n for n, m in packed.items() if isinstance(m.format, Int4Format) and m.zeros is not None
                  and not m.zeros.is_meta and not torch.equal(m.zeros, m.zeros.round())]  # a meta skeleton cannot tell
    if fractional:
        out.append(f"{short_list(fractional)} have fractional zero points, which {fmt} cannot store; quantise "
                   f"with zero_point='integer'")
    return out


def int4_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in quantized_modules(model).items() if isinstance(m.format, Int4Format)}


def zero_points(m: nn.Module) -> torch.Tensor:
    """Integer zero points ``[groups, out]`` in code units (8 for symmetric weights)."""
    if m.zeros is None:
        return torch.full(tuple(m.scales.shape), 8, dtype=torch.int32)
    return m.zeros.detach().round().to(torch.int32).cpu()


def pack_nibbles_along_rows(values: torch.Tensor) -> torch.Tensor:
    """int ``[R, C]`` in 0..15 -> int32 ``[R, ceil(C/8)]``: field j (bits 4j..4j+3) of word c holds column 8c + j."""
    R, C = values.shape
    padded = torch.zeros(R, -(-C // 8) * 8, dtype=torch.int64)
    padded[:, :C] = values.to(torch.int64) & 0xF
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    words = (padded.reshape(R, -1, 8) << shifts).sum(dim=-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
