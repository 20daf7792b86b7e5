"""GGUF blocks built from our codes and scales, so already-quantised weights are stored without a second rounding.

gguf's own quantisers re-derive scales from float weights (Q4_0 takes the
signed maximum / -8), which would move our int4 values onto another grid.
Here Q4_0 / Q4_1 blocks (32 weights along the input dimension) are packed
directly: Q4_0 ``w = (q - 8) * d`` is our symmetric int4 with ``d`` the
group scale; Q4_1 ``w = q * d + m`` is our asymmetric int4 with
``m = -zero * d``.  Ternary weights fit Q4_0 exactly too (``d = gamma``,
``q = code + 8``), which is the fallback where TQ2_0/TQ1_0 blocks of 256 do
not divide a row.  TQ2_0, TQ1_0 and Q8_0 use gguf's quantisers, which
reproduce ternary values exactly (their block scale is the block's max |w|).
"""
from __future__ import annotations

import numpy as np
import torch

QK = 32  # weights per Q4_0 / Q4_1 / Q8_0 block
QK_TERNARY = 256  # weights per TQ1_0 / TQ2_0 block


def _nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 ``[rows, n_blocks, 32]`` codes 0..15 -> ``[rows, n_blocks, 16]`` bytes: byte j = q[j] | q[j+16] << 4."""
    return (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype(np.float16)).view(np.uint8).reshape(*x.shape[:-1], -1)


def block_scales(scales: torch.Tensor, group_size: int, K: int) -> np.ndarray:
    """Per-group ``[n_groups, N]`` -> per-block ``[N, K/32]`` (float32); groups are whole blocks."""
    per_block = scales.detach().to(torch.float32).t().repeat_interleave(group_size // QK, dim=1)
    return per_block[:, : K // QK].cpu().numpy()


def q4_0(codes: torch.Tensor, d: np.ndarray) -> np.ndarray:
    """codes uint8 ``[N, K]`` (0..15, offset 8), ``d`` ``[N, K/32]`` -> Q4_0 bytes ``[N, K/32 * 18]``."""
    N, K = codes.shape
    q = codes.cpu().numpy().astype(np.uint8).reshape(N, K // QK, QK)
    blocks = np.concatenate([_f16_bytes(d[..., None]), _nibbles(q)], axis=-1)
    return blocks.reshape(N, -1)


def q4_1(codes: torch.Tensor, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """codes uint8 ``[N, K]``, ``d`` and ``m`` ``[N, K/32]`` -> Q4_1 bytes ``[N, K/32 * 20]``."""
    N, K = codes.shape
    q = codes.cpu().numpy().astype(np.uint8).reshape(N, K // QK, QK)
    blocks = np.concatenate([_f16_bytes(d[..., None]), _f16_bytes(m[..., None]), _nibbles(q)], axis=-1)
    return blocks.reshape(N, -1)


def q8_0(codes: torch.Tensor, d: np.ndarray) -> np.ndarray:
    """codes int8 ``[N, K]`` (-127..127), ``d`` ``[N, K/32]`` -> Q8_0 bytes ``[N, K/32 * 34]`` (``w = q * d``)."""
    N, K = codes.shape
    q = codes.cpu().numpy().astype(np.int8).reshape(N, K // QK, QK).view(np.uint8)
    blocks = np.concatenate([_f16_bytes(d[..., None]), q], axis=-1)
    return blocks.reshape(N, -1)


def exact_in_f16(x: torch.Tensor) -> bool:
    """True when every value survives a round trip through float16 (GGUF block scales are float16)."""
    x32 = x.detach().to(torch.float32)
    return bool(torch.equal(x32.to(torch.float16).to(torch.float32), x32))
