"""Parameter counts and bytes of a model: what its report says about size."""
from __future__ import annotations

import torch
from torch import nn


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
            if not hasattr(m, "qdata"):  # quantised embeddings and heads (compress.quantization.embedding) are embeddings
                non_emb += n
    return total, non_emb


def bytes_in_memory(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (shared storage counted once)."""
    return sum(t.nbytes for t in _unique([*model.parameters(), *model.buffers()]))


def bytes_on_disk(model: nn.Module) -> int:
    """Bytes a safetensors checkpoint of the state dict holds (tied tensors once, headers aside)."""
    return sum(t.nbytes for t in _unique(model.state_dict().values()))
