"""The dtype float tensors are stored in: bfloat16 by default, float16 where a format needs it, float32 on request.

Every writer (``compress.save`` and each export) asks ``stored_dtype`` what
to write and ``cast_state`` to write it.  Packed data keeps its own dtypes:
the ``scales`` / ``zeros`` of quantised modules (their ``scale_dtype``, in
the manifest) and integer tensors are never cast.  Loading upcasts the
stored floats to float32 (``upcast_state``), so a model computes as before.

    from compress.io.storage import stored_dtype
    stored_dtype(None)              # torch.bfloat16
    stored_dtype(None, "gptq")      # torch.float16 (GPTQ loaders compute in float16)
    stored_dtype("float32")         # torch.float32
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
from torch import nn

from compress.errors import CompressError, quote
from compress.packed import is_packed

DTYPES = ("bfloat16", "float16", "float32")
DEFAULT = "bfloat16"
# formats whose loaders need another 16-bit type than bfloat16
FORMAT_DEFAULTS = {"gptq": "float16", "gguf": "float16"}
# tensors a packed module stores in its own dtype (recorded with the module), never cast
PACKED_LEAVES = ("scales", "zeros")

DtypeLike = Union[str, torch.dtype, None]


class StorageError(CompressError):
    """A stored dtype that is not one of ``DTYPES``."""


def dtype_name(dtype: DtypeLike, format: Optional[str] = None) -> str:
    """``dtype`` (a name, a torch dtype, or None for the format's default) as one of ``DTYPES``."""
    if dtype is None:
        return FORMAT_DEFAULTS.get(str(format or "").lower(), DEFAULT)
    name = str(dtype).removeprefix("torch.").strip().lower() if isinstance(dtype, (str, torch.dtype)) else None
    name = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}.get(name, name)
    if name not in DTYPES:
        raise StorageError(f"Storage dtype {quote(dtype, 40)} is not one compress-lm writes; use one of "
                           f"{', '.join(DTYPES)} (--dtype on the command line, dtype= in compress.save / export).")
    return name


def stored_dtype(dtype: DtypeLike = None, format: Optional[str] = None) -> torch.dtype:
    """The torch dtype float tensors are written in (see ``dtype_name``)."""
    return getattr(torch, dtype_name(dtype, format))


def packed_names(model: nn.Module) -> set[str]:
    """State-dict names of tensors packed modules keep in their own dtype (scales and zeros of quantised modules)."""
    out = set()
    for name, m in model.named_modules():
        if is_packed(m, "linear") or is_packed(m, "embedding"):
            out.update(f"{name}.{leaf}" if name else leaf for leaf in PACKED_LEAVES)
    return out


def is_cast(name: str, tensor: torch.Tensor, keep: Iterable[str]) -> bool:
    """True for float tensors the stored dtype applies to (not packed scales / zeros)."""
    return tensor.is_floating_point() and name not in keep


def cast_state(tensors: dict[str, torch.Tensor], dtype: torch.dtype, keep: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """``tensors`` with every float tensor not in ``keep`` in ``dtype`` (others untouched); a new dict."""
    keep = set(keep)
    return {n: (t.to(dtype) if is_cast(n, t, keep) else t) for n, t in tensors.items()}


def upcast_state(tensors: dict[str, torch.Tensor], dtype: Optional[torch.dtype], keep: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Loading: the stored floats (not in ``keep``) in ``dtype`` (None: as stored); in place, returns ``tensors``."""
    if dtype is None:
        return tensors
    keep = set(keep)
    for n, t in tensors.items():
        if is_cast(n, t, keep) and t.dtype != dtype:
            tensors[n] = t.to(dtype)
    return tensors


@torch.no_grad()
def round_model_(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Round every stored float tensor of ``model`` through ``dtype`` in place (compute dtype unchanged).

    The model then computes what a checkpoint stored in ``dtype`` computes
    once loaded: export checks compare against it, so their tolerance
    follows the stored dtype.  Non-persistent buffers (RoPE tables) are not stored and stay.
    """
    keep = packed_names(model)
    for name, t in model.state_dict(keep_vars=True).items():
        if is_cast(name, t, keep) and t.dtype != dtype:
            t.data.copy_(t.data.to(dtype).to(t.dtype))
    return model
