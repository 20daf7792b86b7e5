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
from compress.kernels.formats import GroupedIntFormat, Int4Format


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


def packed_inputs(m: nn.Module) -> torch.Tensor:
    """int32 ``[out, ceil(in*bits/32)]``: each output's codes as one dense stream along the inputs.  Our int4
    ``qweight`` is that stream already (transposed); int3's bit planes are repacked."""
    if isinstance(m.format, Int4Format):
        return m.qweight.detach().cpu().t().contiguous()
    return pack_along_rows(codes_of(m), bits_of(m))


def zero_points(m: nn.Module) -> torch.Tensor:
    """Integer zero points ``[groups, out]`` in code units (2**(bits-1) for symmetric weights)."""
    if m.zeros is None:
        return torch.full(tuple(m.scales.shape), 1 << (bits_of(m) - 1), dtype=torch.int32)
    return m.zeros.detach().round().to(torch.int32).cpu()


def pack_along_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int ``[R, C]`` in 0 .. 2**bits - 1 -> int32 ``[R, ceil(C*bits/32)]``: column c at bits ``bits*c ..`` of the
    row's stream, word w holding stream bits ``32w .. 32w+31`` (least significant first).

    Every 32 columns fill exactly ``bits`` words, so the columns are packed a block of 32 at a time, one position
    of the block per pass: int64 temporaries of ``bits/4`` bytes per code, not one int64 per bit."""
    R, C = values.shape
    blocks = -(-C // 32)
    v = torch.nn.functional.pad(values.to(torch.uint8), (0, blocks * 32 - C)).reshape(R, blocks, 32)
    words = torch.zeros(R, blocks, bits, dtype=torch.int64)
    for j in range(32):
        word, offset = divmod(j * bits, 32)
        code = v[:, :, j].to(torch.int64)
        words[:, :, word] |= (code << offset) & 0xFFFFFFFF
        if offset + bits > 32:  # the code straddles two words: its high bits open the next one
            words[:, :, word + 1] |= code >> (32 - offset)
    words = words.reshape(R, blocks * bits)[:, : -(-C * bits // 32)]
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
