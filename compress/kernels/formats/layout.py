"""Bit layouts of the packed linear formats: packing, unpacking, dequantising, shape checks.

The contract is written once, in :mod:`compress.kernels.formats`; the format
classes (:mod:`compress.kernels.formats.linear`) are built on these functions.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = [
    "INT4_PER_WORD",
    "INT3_PER_BLOCK",
    "TERNARY_PER_WORD",
    "pack_int4",
    "unpack_int4",
    "pack_int3",
    "unpack_int3",
    "dequantize_int3",
    "pack_ternary",
    "unpack_ternary",
    "dequantize_int4",
    "dequantize_ternary",
    "broadcast_ternary_scale",
    "resolve_group_size",
    "int4_num_groups",
    "k_problem",
    "int4_group_problem",
    "check_int4",
    "check_ternary",
    "A8_QMAX",
    "quantize_activations_int8",
    "a8_weight_scale",
    "a8_rescale",
]

INT4_PER_WORD = 8
INT3_PER_BLOCK = 32  # int3: 32 inputs per block of 3 words (one bit plane each)
TERNARY_PER_WORD = 16


# --------------------------------------------------------------------------- checks

def k_problem(fmt: str, per_word: int, N: int, K: int) -> Optional[str]:
    """Why ``K`` cannot be packed ``per_word`` codes to an int32 word (None if it can)."""
    if K <= 0 or K % per_word:
        padded = ((max(K, 1) + per_word - 1) // per_word) * per_word
        return (
            f"{fmt} weight of shape [{N}, {K}] cannot be packed: in_features K={K} must be a "
            f"positive multiple of {per_word}; pad K to {padded} or leave this layer unquantised."
        )
    return None


def int4_group_problem(N: int, K: int, group_size: Optional[int], fmt: str = "int4") -> Optional[str]:
    """Why ``group_size`` cannot serve an int4 (or int3, ``fmt``) ``[N, K]`` weight (None if it can)."""
    G = K if group_size in (-1, 0, None) else int(group_size)
    if G != K and (G < 16 or G & (G - 1)):
        return (
            f"{fmt} weight of shape [{N}, {K}] cannot use group size {group_size}: use a power "
            f"of two >= 16 (32, 64 or 128; the last group may be partial), or -1 for one group per channel."
        )
    return None


def int4_num_groups(K: int, group_size: int) -> int:
    """Rows of the int4 scales: ``ceil(K / G)`` (the last group may be partial)."""
    return -(-K // group_size)


def resolve_group_size(group_size: Optional[int], K: int, N: int = -1) -> int:
    """Return the effective int4 group size (``-1``, ``0`` or None mean per-channel, G = K)."""
    problem = k_problem("int4", INT4_PER_WORD, N, K) or int4_group_problem(N, K, group_size)
    if problem:
        raise ValueError(problem)
    return K if group_size in (-1, 0, None) else int(group_size)


def _check_k(fmt: str, per_word: int, N: int, K: int) -> None:
    problem = k_problem(fmt, per_word, N, K)  # the group size is checked with the scales
    if problem:
        raise ValueError(problem)


def check_int4(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    group_size: int,
    bits: int = 4,
) -> tuple[int, int, int]:
    """Validate packed int4 (``bits=3``: int3) tensors against the contract; return ``(N, K, G)``."""
    name, rows = ("int4", "K/8") if bits == 4 else ("int3", "3K/32")
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or (bits == 3 and qweight.shape[0] % 3):
        raise ValueError(
            f"{name} qweight must be a 2-D int32 tensor [{rows}, N], got {qweight.dtype} of shape "
            f"{list(qweight.shape)}; build it with pack_{name}."
        )
    K, N = packed_k(qweight.shape[0], bits), qweight.shape[1]
    G = resolve_group_size(group_size, K, N)
    want = [int4_num_groups(K, G), N]
    if not scales.is_floating_point() or list(scales.shape) != want:
        tail = f"; the last group covers the {K % G} remaining inputs" if K % G else ""
        raise ValueError(
            f"{name} scales must be a float tensor of shape {want} (ceil(K/G) x N for K={K}, G={G}{tail}), "
            f"got {scales.dtype} of shape {list(scales.shape)}."
        )
    if zeros is not None and (not zeros.is_floating_point() or list(zeros.shape) != want):
        raise ValueError(
            f"{name} zeros must be None (symmetric, offset {1 << (bits - 1)}) or a float tensor of shape {want}, "
            f"got {zeros.dtype} of shape {list(zeros.shape)}."
        )
    return N, K, G


def packed_k(rows: int, bits: int) -> int:
    """Inputs K that ``rows`` rows of a packed int4 (8 per word) or int3 (32 per 3 words) qweight hold."""
    return rows * INT4_PER_WORD if bits == 4 else rows // 3 * INT3_PER_BLOCK


def check_ternary(qweight: torch.Tensor, scale: torch.Tensor) -> tuple[int, int]:
    """Validate packed ternary tensors against the contract; return ``(N, K)``."""
    if qweight.dtype != torch.int32 or qweight.dim() != 2:
        raise ValueError(
            f"ternary qweight must be a 2-D int32 tensor [K/16, N], got {qweight.dtype} of shape "
            f"{list(qweight.shape)}; build it with pack_ternary."
        )
    K, N = qweight.shape[0] * TERNARY_PER_WORD, qweight.shape[1]
    if not scale.is_floating_point() or scale.numel() not in (1, N) or scale.dim() > 1:
        raise ValueError(
            f"ternary scale must be a float tensor of shape [{N}] (one per output channel) or a "
            f"single per-tensor value, got {scale.dtype} of shape {list(scale.shape)}."
        )
    return N, K


def broadcast_ternary_scale(scale: torch.Tensor | float, N: int) -> torch.Tensor:
    """Return ``scale`` as a contiguous ``[N]`` tensor (a per-tensor scale is repeated)."""
    scale = torch.as_tensor(scale)
    if scale.numel() == N and scale.dim() == 1:
        return scale.contiguous()
    if scale.numel() != 1:
        raise ValueError(
            f"ternary scale has {scale.numel()} values but the weight has N={N} output channels; "
            f"pass one scale per output channel or a single per-tensor scale."
        )
    return scale.reshape(1).expand(N).contiguous()


# --------------------------------------------------------------------------- bit packing

def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``codes[N, K]`` (values < 2**bits) along K into int32 ``[K*bits/32, N]``."""
    per_word = 32 // bits
    N, K = codes.shape
    c = codes.to(torch.int64).t().reshape(K // per_word, per_word, N)
    shifts = (torch.arange(per_word, device=codes.device, dtype=torch.int64) * bits).view(1, -1, 1)
    words = (c << shifts).sum(dim=1)  # fields do not overlap, so sum == bitwise or
    # Reinterpret the unsigned 32-bit pattern as int32 (the top field may set the sign bit).
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).contiguous()


def _unpack(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`_pack`: int32 ``[R, N]`` -> uint8 codes ``[N, R * 32/bits]``."""
    per_word = 32 // bits
    R, N = qweight.shape
    shifts = (torch.arange(per_word, device=qweight.device, dtype=torch.int32) * bits).view(1, -1, 1)
    # Arithmetic shift then mask: the sign extension lands above the mask.
    fields = (qweight.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return fields.reshape(R * per_word, N).t().to(torch.uint8).contiguous()


def _check_codes(q: torch.Tensor, hi: int, fmt: str) -> None:
    if q.dim() != 2 or q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise ValueError(
            f"{fmt} codes must be a 2-D integer tensor [N, K], got {q.dtype} of shape {list(q.shape)}."
        )
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > hi):
        raise ValueError(
            f"{fmt} codes must lie in 0..{hi}, got values in {int(q.min())}..{int(q.max())}; "
            f"quantise (and add the offset) before packing."
        )


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack unsigned 4-bit codes ``q[N, K]`` (0..15) into int32 ``qweight[K/8, N]``."""
    _check_codes(q, 15, "int4")
    _check_k("int4", INT4_PER_WORD, q.shape[0], q.shape[1])
    return _pack(q, 4)


def unpack_int4(qweight: torch.Tensor, K: Optional[int] = None) -> torch.Tensor:
    """Unpack int32 ``qweight[K/8, N]`` into uint8 codes ``[N, K]`` (0..15)."""
    if qweight.dtype != torch.int32 or qweight.dim() != 2:
        raise ValueError(f"int4 qweight must be a 2-D int32 tensor, got {qweight.dtype} {list(qweight.shape)}.")
    if K is not None and K != qweight.shape[0] * INT4_PER_WORD:
        raise ValueError(
            f"int4 qweight of shape {list(qweight.shape)} holds K={qweight.shape[0] * INT4_PER_WORD} "
            f"inputs, not K={K}; pass the in_features the weight was packed with."
        )
    return _unpack(qweight, 4)


def pack_int3(q: torch.Tensor) -> torch.Tensor:
    """Pack 3-bit codes ``q[N, K]`` (0..7) into int32 ``qweight[3K/32, N]`` as bit planes.

    Inputs ``32r .. 32r+31`` fill rows ``3r, 3r+1, 3r+2``: bit ``j`` of row
    ``3r + b`` is bit ``b`` of ``q[n, 32r + j]``.  Three bits per weight exactly,
    and a kernel rebuilds a code from three shifts and masks.
    """
    _check_codes(q, 7, "int3")
    _check_k("int3", INT3_PER_BLOCK, q.shape[0], q.shape[1])
    N, K = q.shape
    c = q.to(torch.int64)
    planes = torch.stack([(c >> b) & 1 for b in range(3)], dim=1)  # [N, 3, K]
    blocks = planes.reshape(N, 3, K // INT3_PER_BLOCK, INT3_PER_BLOCK).permute(2, 1, 0, 3)  # [K/32, 3, N, 32]
    return _pack(blocks.reshape(-1, INT3_PER_BLOCK), 1).reshape(3 * K // INT3_PER_BLOCK, N)


def unpack_int3(qweight: torch.Tensor, K: Optional[int] = None) -> torch.Tensor:
    """Unpack int32 ``qweight[3K/32, N]`` (bit planes) into uint8 codes ``[N, K]`` (0..7)."""
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[0] % 3:
        raise ValueError(f"int3 qweight must be a 2-D int32 tensor [3K/32, N], got {qweight.dtype} "
                         f"{list(qweight.shape)}.")
    R, N = qweight.shape
    held = packed_k(R, 3)
    if K is not None and K != held:
        raise ValueError(
            f"int3 qweight of shape {list(qweight.shape)} holds K={held} inputs, not K={K}; pass the in_features "
            f"the weight was packed with."
        )
    bits = _unpack(qweight.reshape(1, -1), 1)  # [R*N, 32]: the bits of every word
    planes = bits.reshape(R // 3, 3, N, INT3_PER_BLOCK).to(torch.int32)  # [block, plane, n, j]
    codes = planes[:, 0] | (planes[:, 1] << 1) | (planes[:, 2] << 2)  # [K/32, N, 32]
    return codes.permute(1, 0, 2).reshape(N, held).to(torch.uint8).contiguous()


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes ``c = w + 1`` (``[N, K]``, values 0..2) into int32 ``qweight[K/16, N]``.

    Pass ``w + 1`` where ``w`` in {-1, 0, 1}; signed input is refused so that an
    off-by-one never silently packs.
    """
    _check_codes(codes, 2, "ternary")
    _check_k("ternary", TERNARY_PER_WORD, codes.shape[0], codes.shape[1])
    return _pack(codes, 2)


def unpack_ternary(qweight: torch.Tensor, K: Optional[int] = None) -> torch.Tensor:
    """Unpack int32 ``qweight[K/16, N]`` into uint8 codes ``c = w + 1`` of shape ``[N, K]``."""
    if qweight.dtype != torch.int32 or qweight.dim() != 2:
        raise ValueError(f"ternary qweight must be a 2-D int32 tensor, got {qweight.dtype} {list(qweight.shape)}.")
    if K is not None and K != qweight.shape[0] * TERNARY_PER_WORD:
        raise ValueError(
            f"ternary qweight of shape {list(qweight.shape)} holds K={qweight.shape[0] * TERNARY_PER_WORD} "
            f"inputs, not K={K}; pass the in_features the weight was packed with."
        )
    return _unpack(qweight, 2)


# --------------------------------------------------------------------------- dequantisation

def dequantize_int4(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    group_size: int,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Return the float weight ``[N, K]`` (in ``dtype``, default the scales' dtype).

    The arithmetic is done in float32 so the result does not depend on ``dtype``.
    """
    return _dequantize_grouped(qweight, scales, zeros, group_size, dtype, bits=4)


def dequantize_int3(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    group_size: int,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Return the float weight ``[N, K]`` of packed int3 (symmetric offset 4), as :func:`dequantize_int4`."""
    return _dequantize_grouped(qweight, scales, zeros, group_size, dtype, bits=3)


def _dequantize_grouped(qweight, scales, zeros, group_size, dtype, bits: int) -> torch.Tensor:
    N, K, G = check_int4(qweight, scales, zeros, group_size, bits=bits)
    q = (_unpack(qweight, 4) if bits == 4 else unpack_int3(qweight)).to(torch.float32)  # [N, K]
    s = _per_input(scales, G, K)
    z = float(1 << (bits - 1)) if zeros is None else _per_input(zeros, G, K)
    return ((q - z) * s).to(dtype or scales.dtype)


def _per_input(rows: torch.Tensor, G: int, K: int) -> torch.Tensor:
    """Group rows ``[ceil(K/G), N]`` spread to ``[N, K]`` in float32 (a partial last group is cut to K)."""
    return rows.to(torch.float32).t().repeat_interleave(G, dim=1)[:, :K]


def dequantize_ternary(
    qweight: torch.Tensor,
    scale: torch.Tensor,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Return the float weight ``[N, K]`` (in ``dtype``, default the scale's dtype)."""
    N, K = check_ternary(qweight, scale)
    s = broadcast_ternary_scale(scale, N).to(torch.float32)
    c = _unpack(qweight, 2).to(torch.float32)
    return ((c - 1.0) * s[:, None]).to(dtype or scale.dtype)


# --------------------------------------------------------------------------- W1.58A8 arithmetic

A8_QMAX = 127


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantisation of ``x[..., K]``, transformers' ``BitLinear.activation_quant``.

    Returns ``(x_q, inv)``: int8 ``[M, K]`` and float32 ``[M]`` with ``x ~= x_q / inv[:, None]``
    (``inv = 127 / max|x|``, computed in float32 whatever ``x``'s dtype).
    """
    xf = x.reshape(-1, x.shape[-1]).to(torch.float32)
    inv = A8_QMAX / xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    x_q = (xf * inv).round().clamp(-A8_QMAX - 1, A8_QMAX).to(torch.int8)
    return x_q, inv.squeeze(-1)


def a8_weight_scale(scale: torch.Tensor | float, N: int) -> torch.Tensor:
    """The float32 ``[N]`` weight scale ``1 / gamma`` (divided in float64, rounded once), as exported."""
    gamma = broadcast_ternary_scale(torch.as_tensor(scale), N).to(torch.float64)
    return (1.0 / gamma).to(torch.float32)


def a8_rescale(acc: torch.Tensor, inv: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """``acc[M, N] / (weight_scale[N] * inv[M])`` in float32: BitLinear's ``post_quant_process``, same order."""
    return acc.to(torch.float32) / (weight_scale.to(torch.float32)[None, :] * inv.to(torch.float32)[:, None])
