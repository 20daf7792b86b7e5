"""Fingerprints of a model: what a resume, a run directory or a cache checks before it trusts saved work.

``model_fingerprint`` hashes module types, tensor names, shapes, dtypes and a
strided sample of values; ``model_tensors`` lists ``name -> "[shape] dtype"``
and ``model_difference`` says in words how two such lists differ.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["model_fingerprint", "model_tensors", "model_difference"]

_HASH_ELEMENTS = 1 << 20  # per tensor: enough to tell models apart without reading 30 GB


def model_fingerprint(model: nn.Module) -> str:
    """Module types, tensor names, shapes, dtypes and (a strided sample of) values of ``model``."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        digest.update(f"{name}:{type(module).__name__};".encode())
    for name, t in model.state_dict().items():
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        flat = t.detach().reshape(-1)
        if flat.numel() > _HASH_ELEMENTS:
            flat = flat[:: flat.numel() // _HASH_ELEMENTS + 1]
        digest.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def model_tensors(model: nn.Module) -> dict[str, str]:
    """``name -> "[shape] dtype"`` of every tensor in ``model``'s state dict: what a refusal to resume names."""
    return {name: f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for name, t in model.state_dict().items()}


def model_difference(saved: dict[str, str] | None, now: dict[str, str]) -> str:
    """How the model a checkpoint was made from differs from ``now`` (both from ``model_tensors``)."""
    if not saved:
        return "the checkpoint does not list its tensors"
    changed = [n for n in now if n in saved and saved[n] != now[n]]  # in the model's order
    missing = [n for n in saved if n not in now]
    extra = [n for n in now if n not in saved]
    parts = []
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        parts.append(f"{changed[0]} is {saved[changed[0]]} there and {now[changed[0]]} here{more}")
    if missing:
        parts.append(f"{len(missing)} tensor(s) such as {missing[0]} are missing here")
    if extra:
        parts.append(f"{len(extra)} tensor(s) such as {extra[0]} were not there")
    return "; ".join(parts) or "the same tensor names, shapes and dtypes but other values"
