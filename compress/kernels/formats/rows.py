"""The packed row layouts of an embedding table ``[V, D]`` (or an output head), one class each.

``Int8RowsFormat``: ``qdata`` int8 ``[V, D]``, ``scales`` ``[V, 1]``;
``w = q * s`` with ``q`` in -127..127.

``Int4RowsFormat``: ``qdata`` uint8 ``[V, D/2]`` (column ``2j`` in the low
nibble, ``2j+1`` in the high one, codes ``q + 8`` in 0..15), ``scales``
``[V, D/G]``; ``w = q * s`` with ``q`` in -8..7 (GGUF's Q4_0 layout
``(code - 8) * d``, so the export stores the same numbers).

An instance is one table's layout (its group size); the embedding config's
values ``"int8"`` / ``"int4"`` name them (``config_name``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

__all__ = ["RowFormat", "Int8RowsFormat", "Int4RowsFormat", "pack_int4_rows", "unpack_int4_rows"]


def pack_int4_rows(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes -8..7 ``[V, D]`` -> uint8 ``[V, D/2]``: low nibble column 2j, high nibble column 2j+1 (code + 8)."""
    u = (codes.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4_rows(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[V, D/2]`` -> int8 codes -8..7 ``[V, D]``."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


@dataclass(frozen=True)
class RowFormat:
    """Base of the embedding row formats: signed codes times one float scale per group of a row."""

    kind: ClassVar[str] = "embedding"
    name: ClassVar[str]
    config_name: ClassVar[str]  # the value of QuantConfig.embeddings that picks it
    bits: ClassVar[int]
    qmin: ClassVar[int]
    qmax: ClassVar[int]
    qdata_dtype: ClassVar[torch.dtype]
    per_byte: ClassVar[int]  # codes per stored byte of qdata

    group_size: int  # weights per scale along a row (the whole row for int8)

    @classmethod
    def resolve_group_size(cls, D: int, group_size: Optional[int]) -> int:
        """The group size a ``[V, D]`` table uses when ``group_size`` is asked for."""
        return D if group_size is None else group_size

    @classmethod
    def group_problem(cls, D: int, group_size: int) -> Optional[str]:
        """Why rows of width ``D`` cannot be cut into groups of ``group_size`` (None if they can)."""
        if D % group_size or group_size % cls.per_byte:
            return f"group size {group_size} does not divide the embedding width {D} into even groups"
        return None

    def buffer_shapes(self, V: int, D: int) -> dict[str, tuple[int, ...]]:
        return {"qdata": (V, D // self.per_byte), "scales": (V, D // self.group_size)}

    def buffers(self, V: int, D: int, scale_dtype: torch.dtype, device: Any = None) -> dict[str, torch.Tensor]:
        shapes = self.buffer_shapes(V, D)
        return {"qdata": torch.zeros(shapes["qdata"], dtype=self.qdata_dtype, device=device),
                "scales": torch.zeros(shapes["scales"], dtype=scale_dtype, device=device)}

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        """Signed int8 codes ``[V, D]`` -> ``qdata``."""
        raise NotImplementedError

    def unpack(self, qdata: torch.Tensor) -> torch.Tensor:
        """``qdata[..., D / per_byte]`` -> signed int8 codes ``[..., D]``."""
        raise NotImplementedError

    def dequantize(self, qdata: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float rows ``[..., D]`` that ``qdata`` / ``scales`` (same leading dims) stand for."""
        return self.dequantize_codes(self.unpack(qdata), scales, dtype)

    def dequantize_codes(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
                         ) -> torch.Tensor:
        """``codes * scale`` per group: signed codes ``[..., D]`` and their ``scales`` -> float rows ``[..., D]``."""
        q = codes.to(torch.float32)
        w = q.reshape(*q.shape[:-1], -1, self.group_size) * scales.to(torch.float32)[..., None]
        return w.reshape(q.shape).to(dtype)

    def label(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Int8RowsFormat(RowFormat):
    name: ClassVar[str] = "int8_rows"
    config_name: ClassVar[str] = "int8"
    bits: ClassVar[int] = 8
    qmin: ClassVar[int] = -127
    qmax: ClassVar[int] = 127
    qdata_dtype: ClassVar[torch.dtype] = torch.int8
    per_byte: ClassVar[int] = 1

    @classmethod
    def resolve_group_size(cls, D, group_size):
        return D  # one scale per row

    def pack(self, codes):
        return codes.to(torch.int8)

    def unpack(self, qdata):
        return qdata

    def label(self):
        return "int8 per-row"


@dataclass(frozen=True)
class Int4RowsFormat(RowFormat):
    name: ClassVar[str] = "int4_rows"
    config_name: ClassVar[str] = "int4"
    bits: ClassVar[int] = 4
    qmin: ClassVar[int] = -8
    qmax: ClassVar[int] = 7
    qdata_dtype: ClassVar[torch.dtype] = torch.uint8
    per_byte: ClassVar[int] = 2

    def pack(self, codes):
        return pack_int4_rows(codes)

    def unpack(self, qdata):
        return unpack_int4_rows(qdata.reshape(-1, qdata.shape[-1])).reshape(*qdata.shape[:-1], -1)

    def label(self):
        return f"int4 g{self.group_size}"
