"""Model-family adapters: the only place in compress-lm that names a family."""
from compress.arch.adapter import (
    HEAD_ATTRS,
    Adapter,
    LayerParts,
    UnsupportedModelError,
    adapter_for,
    is_causal_lm,
    supported_families,
)
from compress.arch.spec import SPECS, ArchSpec

__all__ = [
    "HEAD_ATTRS",
    "Adapter",
    "ArchSpec",
    "LayerParts",
    "SPECS",
    "UnsupportedModelError",
    "adapter_for",
    "is_causal_lm",
    "supported_families",
]
