"""Parameter counts and bytes of a model: what its report says about size."""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from compress.errors import ConfigError
from compress.packed import is_packed


def _unique(tensors) -> list[torch.Tensor]:
    seen: dict[tuple[int, int], torch.Tensor] = {}
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        seen.setdefault((t.untyped_storage().data_ptr(), t.storage_offset()), t)
    return list(seen.values())


def embedding_parameters(model: nn.Module) -> set[int]:
    """ids of input embeddings (every nn.Embedding) and of the output head."""
    ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        ids |= {id(p) for p in head.parameters()}
    return ids


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, parameters outside embeddings and lm_head); tied weights count once.

    Modules that store packed weights report their logical size through a
    ``logical_numel()`` method so quantised models count like float ones.
    """
    emb = embedding_parameters(model)
    total = non_emb = 0
    for p in model.parameters():  # parameters() already skips tied duplicates
        total += p.numel()
        if id(p) not in emb:
            non_emb += p.numel()
    for m in model.modules():
        logical = getattr(m, "logical_numel", None)
        if callable(logical):
            n = int(logical())
            total += n
            if not is_packed(m, "embedding"):  # quantised embeddings and heads (compress.quantization.embedding) are embeddings
                non_emb += n
    return total, non_emb


def bytes_in_memory(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (shared storage counted once)."""
    return sum(t.nbytes for t in _unique([*model.parameters(), *model.buffers()]))


def bytes_on_disk(model: nn.Module) -> int:
    """Bytes a safetensors checkpoint of the state dict holds (tied tensors once, headers aside)."""
    return sum(t.nbytes for t in _unique(model.state_dict().values()))


# -- sizes with units (QuantConfig.target_size, --target-size) -------------------------------------------------

UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
_SIZE = re.compile(r"\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Bytes from ``80MiB``, ``1.5 GB``, ``500KiB``, ``1000B`` (an int is bytes); refuses no unit or a size <= 0."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.fullmatch(str(value))
        unit = m.group(2).lower() if m else None
        if m is None or not unit or unit not in UNITS:
            raise ConfigError(f"target size {str(value)!r} needs a number and a unit (B, KB, KiB, MB, MiB, GB, GiB), "
                              f"such as 80MiB.")
        size = int(float(m.group(1)) * UNITS[unit])
    if size <= 0:
        raise ConfigError(f"target size {value!r} must be more than 0 bytes; give one such as 80MiB.")
    return size


def format_size(n: float) -> str:
    """``83886080`` -> ``80.00 MiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"

