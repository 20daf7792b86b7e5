"""``PackedModule``: the one base class of every module that stores packed low-bit weights.

``QuantLinear`` (``kind = "linear"``: ``qweight`` / ``scales`` / ``zeros``),
``QuantEmbedding`` (``"embedding"``, an input embedding or an untied head:
``qdata`` / ``scales``) and ``TiedQuantHead`` (``"tied_head"``: reads the
input embedding's packed data and stores nothing of its own) derive from it,
so checkpoints, exports, size counts and model adapters recognise them by
type with :func:`is_packed` instead of probing for buffer names.

This file imports only torch, so every package may import it (it sits beside
``errors`` and ``sizes`` at the bottom of the import graph).
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional

from torch import nn

__all__ = ["PACKED_KINDS", "PackedModule", "is_packed"]

PACKED_KINDS = ("linear", "embedding", "tied_head")


class PackedModule(nn.Module):
    """A module holding packed low-bit weights; ``kind`` says which of :data:`PACKED_KINDS` it is."""

    kind: ClassVar[str] = ""


def is_packed(module: Any, kind: Optional[str] = None) -> bool:
    """True for a packed module (of ``kind``, one of ``"linear"``, ``"embedding"``, ``"tied_head"``, when given)."""
    if kind is not None and kind not in PACKED_KINDS:
        raise ValueError(f"unknown packed module kind {kind!r}; use one of {', '.join(PACKED_KINDS)} or None for any.")
    return isinstance(module, PackedModule) and (kind is None or module.kind == kind)
