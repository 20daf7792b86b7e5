"""What the group-wise integer exports (gptq, compressed-tensors) share: their modules, checks and bit packing.

Both formats store int4 and int3 codes the same way: a dense bit stream in
int32 words, element ``i`` of a row at bits ``bits*i ..`` of the stream (a
field may straddle two words; for 4 bits it never does, and the layout is
eight nibbles per word).  Only packed int4 / int3 weights with integer zero
points fit.
"""
from __future__ import annotations

import torch
from torch import nn

from compress.io.exports.common import quantized_modules, short_list
from compress.kernels.formats import GroupedIntFormat


def int_problems(model: nn.Module, fmt: str) -> list[str]:
    packed = quantized_modules(model)
    if not packed:
        return [f"the model has no int4 weights; export does not quantise by itself (it would have to choose a group "
                f"size and calibration for you), so quantise it first: compress-lm quantize MODEL --method int4 "
                f"--group-size 128 [--gptq], then export the result as {fmt}"]
    out: list[str] = []
    ternary = [n for n, m in packed.items() if not isinstance(m.format, GroupedIntFormat)]
    if ternary:
        out.append(f"{short_list(ternary)} hold ternary weights, which {fmt} does not store; export ternary models "
                   f"as bitnet or gguf")
    fractional = [n for n, m in packed.items() if isinstance(m.format, GroupedIntFormat) and m.zeros is not None
                  and not m.zeros.is_meta and not torch.equal(m.zeros, m.zeros.round())]  # a meta skeleton cannot tell
    if fractional:
        out.append(f"{short_list(fractional)} have fractional zero points, which {fmt} cannot store; quantise "
                   f"with zero_point='integer'")
    return out


def int_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> packed int4 or int3 linear, in model order."""
    return {n: m for n, m in quantized_modules(model).items() if isinstance(m.format, GroupedIntFormat)}


def bits_of(m: nn.Module) -> int:
    return int(m.format.bits)


def codes_of(m: nn.Module) -> torch.Tensor:
    """Unsigned codes ``[out, in]`` (0 .. 2**bits - 1)."""
    return m.format.unpack(m.qweight.detach().cpu(), m.in_features)


def zero_points(m: nn.Module) -> torch.Tensor:
    """Integer zero points ``[groups, out]`` in code units (2**(bits-1) for symmetric weights)."""
    if m.zeros is None:
        return torch.full(tuple(m.scales.shape), 1 << (bits_of(m) - 1), dtype=torch.int32)
    return m.zeros.detach().round().to(torch.int32).cpu()


def pack_along_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int ``[R, C]`` in 0 .. 2**bits - 1 -> int32 ``[R, ceil(C*bits/32)]``: column c at bits ``bits*c ..`` of the
    row's stream, word w holding stream bits ``32w .. 32w+31`` (least significant first)."""
    R, C = values.shape
    stream = (values.to(torch.int64).unsqueeze(-1) >> torch.arange(bits)) & 1  # [R, C, bits]
    stream = stream.reshape(R, C * bits)
    words = -(-C * bits // 32)
    stream = torch.nn.functional.pad(stream, (0, words * 32 - C * bits))
    packed = (stream.reshape(R, words, 32) << torch.arange(32)).sum(dim=-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)

