"""Low-bit matmul kernels (installed as ``compress.kernels``).

Triton kernels for ternary, int4 and int3 weights with a pure-PyTorch reference of
the same signature for each, and one dispatch function.  This package knows
nothing of models and imports only torch and triton.

The packed layouts are documented once, in :mod:`compress.kernels.formats`,
one class per layout in the registry ``formats.FORMATS`` / ``get_format(name)``.
Names are imported lazily: ``import compress.kernels`` loads neither torch's
custom-op registry nor Triton and never touches a GPU.

    from compress.kernels import pack_int4, quant_matmul
    y = quant_matmul(x, qweight, scales, zeros, fmt="int4", group_size=128)
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_API = {
    # storage formats (formats/)
    "pack_int4": "formats",
    "unpack_int4": "formats",
    "pack_int3": "formats",
    "unpack_int3": "formats",
    "dequantize_int3": "formats",
    "pack_ternary": "formats",
    "unpack_ternary": "formats",
    "dequantize_int4": "formats",
    "dequantize_ternary": "formats",
    "broadcast_ternary_scale": "formats",
    "check_int4": "formats",
    "check_ternary": "formats",
    "resolve_group_size": "formats",
    "shape_problem": "formats",
    # the format classes and their registry (formats/)
    "get_format": "formats",
    "linear_format": "formats",
    "embedding_format": "formats",
    "Int4Format": "formats",
    "Int3Format": "formats",
    "TernaryFormat": "formats",
    "TernaryA8Format": "formats",
    "Int8RowsFormat": "formats",
    "Int4RowsFormat": "formats",
    # W1.58A8 arithmetic shared by the reference, the kernel, QAT and the bitnet export (formats/layout.py)
    "quantize_activations_int8": "formats",
    "a8_weight_scale": "formats",
    "a8_rescale": "formats",
    # dispatch (dispatch.py); importing it registers torch.ops.compress.quant_matmul
    "quant_matmul": "dispatch",
    "choose_kernel": "dispatch",
    "FORMATS": "dispatch",
    "reset_fallbacks": "dispatch",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'compress.kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
