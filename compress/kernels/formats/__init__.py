"""Packed weight formats: the one storage layout per format, shared by every kernel.

Each layout is a class in one registry, ``FORMATS[name]`` / ``get_format(name)``:
``int4`` (:class:`Int4Format`), ``int3`` (:class:`Int3Format`), ``ternary`` (:class:`TernaryFormat`), ``ternary_a8``
(:class:`TernaryA8Format`) for linear weights, ``int8_rows`` / ``int4_rows``
(:class:`Int8RowsFormat`, :class:`Int4RowsFormat`) for embedding tables.  A class
holds its label, buffer shapes, pack / unpack / dequantise, shape checks, the
reference matmul and the Triton kernels it dispatches to, and what exports
read (bits, codes per word).  ``layout.py`` has the bit-level functions,
``linear.py`` and ``rows.py`` the classes, ``registry.py`` the registry.

Shape contract (the only place it is written down; W is an ``nn.Linear``
weight of shape ``[N, K]`` = out_features x in_features):

int4 (W4A16, group-wise)
    ``qweight``  int32 ``[K // 8, N]``, N contiguous.  Nibble ``j`` (bits
                 ``4j .. 4j+3``) of word ``[r, n]`` holds the unsigned code
                 ``q[n, 8r + j]`` in ``0..15``.
    ``scales``   float ``[ceil(K / G), N]`` (float16 by default; any float
                 dtype is accepted).  Row ``g`` covers ``k`` in
                 ``[gG, min((g+1)G, K))``: when G does not divide K the last
                 group is partial (K = 576, G = 128: four groups of 128 and
                 one of 64), as in GPTQ's checkpoint format.
    ``zeros``    float ``[ceil(K / G), N]`` zero points in code units (usually
                 integers 0..15, stored in the scales' dtype), or ``None`` for
                 symmetric weights, which use the fixed offset 8.
    dequant      ``w[n, k] = (q[n, k] - z[k // G, n]) * s[k // G, n]``,
                 with ``z = 8`` when ``zeros is None``.
    ``group_size`` G is a power of two >= 16 (32/64/128 are the usual ones)
                 or ``G == K`` (per-channel; ``-1`` is accepted as a shorthand
                 for K).  K must be a multiple of 8 (packing); G need not
                 divide it, and a G larger than K is one partial group.

int3 (W3A16, group-wise)
    ``qweight``  int32 ``[3K / 32, N]``, N contiguous: bit planes.  Inputs
                 ``32r .. 32r+31`` fill rows ``3r + b`` (b = 0, 1, 2): bit ``j``
                 of word ``[3r + b, n]`` is bit ``b`` of the code ``q[n, 32r + j]``
                 in ``0..7``.  K must be a multiple of 32.
    ``scales``, ``zeros``, ``group_size`` and dequant as int4, with the
                 symmetric offset 4 instead of 8.

ternary (W1.58, BitNet b1.58)
    ``qweight``  int32 ``[K // 16, N]``, N contiguous.  2-bit field ``j``
                 (bits ``2j .. 2j+1``) of word ``[r, n]`` holds the code
                 ``c[n, 16r + j] = w + 1`` in ``{0, 1, 2}`` (3 is never written).
    ``scale``    float ``[N]``, one scale per output channel; a per-tensor
                 scale (0-d or ``[1]``) is broadcast to ``[N]`` by
                 :func:`broadcast_ternary_scale`.
    dequant      ``w[n, k] = (c[n, k] - 1) * scale[n]``.
    K must be a multiple of 16.

W1.58A8 (int8 activations, BitNet b1.58), as transformers' ``BitLinear`` computes it
    ``inv``      float32 ``[M]``: ``127 / max(|x[m, :]|, 1e-5)`` per token, in float32.
    ``x_q``      int8 ``[M, K]``: ``clamp(round_half_even(x * inv), -128, 127)``.
    ``ws``       float32 ``[N]``: the weight scale ``1 / gamma``, divided in float64 and
                 rounded once to float32 (what the ``bitnet`` export stores as ``weight_scale``).
    output       ``y[m, n] = acc[m, n] / (ws[n] * inv[m])``, ``acc`` the exact integer dot
                 ``sum_k x_q[m, k] * (c[n, k] - 1)``; one IEEE product, then one IEEE division,
                 in this order (:func:`a8_rescale`).  Multiplying by ``1/inv`` and ``gamma``
                 instead is the same maths but differs in the last bit for half the outputs,
                 and the next layer's int8 rounding turns such bits into whole steps: the
                 reference, QAT and the Triton kernel all go through these helpers so the
                 exported model computes what was evaluated.

Words are filled from the least significant bits, so the sign bit of an int32
word holds the top bits of the last element; kernels mask after the (arithmetic)
shift, which makes the sign harmless.  This is GemLite's layout (packed along
K, N contiguous), so one tensor serves GEMV, split-K and GEMM alike.
"""
from __future__ import annotations

from .layout import (
    A8_QMAX,
    INT3_PER_BLOCK,
    INT4_PER_WORD,
    TERNARY_PER_WORD,
    a8_rescale,
    a8_weight_scale,
    broadcast_ternary_scale,
    check_int4,
    check_ternary,
    dequantize_int3,
    dequantize_int4,
    dequantize_ternary,
    int4_group_problem,
    int4_num_groups,
    k_problem,
    pack_int3,
    pack_int4,
    pack_ternary,
    quantize_activations_int8,
    resolve_group_size,
    unpack_int3,
    unpack_int4,
    unpack_ternary,
)
from .linear import GroupedIntFormat, Int3Format, Int4Format, LinearFormat, TernaryA8Format, TernaryFormat
from .registry import (
    FORMATS,
    LINEAR_FORMATS,
    ROW_FORMATS,
    Format,
    embedding_format,
    get_format,
    linear_format,
    shape_problem,
)
from .rows import Int4RowsFormat, Int8RowsFormat, RowFormat, pack_int4_rows, unpack_int4_rows

__all__ = [
    "INT4_PER_WORD", "INT3_PER_BLOCK", "TERNARY_PER_WORD", "A8_QMAX",
    "pack_int4", "unpack_int4", "pack_int3", "unpack_int3", "dequantize_int3", "pack_ternary", "unpack_ternary", "dequantize_int4", "dequantize_ternary",
    "broadcast_ternary_scale", "resolve_group_size", "int4_num_groups", "k_problem", "int4_group_problem",
    "shape_problem", "check_int4", "check_ternary",
    "quantize_activations_int8", "a8_weight_scale", "a8_rescale",
    "pack_int4_rows", "unpack_int4_rows",
    "FORMATS", "LINEAR_FORMATS", "ROW_FORMATS", "Format", "get_format", "linear_format", "embedding_format",
    "LinearFormat", "GroupedIntFormat", "Int4Format", "Int3Format", "TernaryFormat", "TernaryA8Format", "RowFormat", "Int8RowsFormat", "Int4RowsFormat",
]
