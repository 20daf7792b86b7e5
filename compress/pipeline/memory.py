"""How much memory a recipe needs, roughly, and how much the machine has.

The estimate is deliberately simple (weights, optimiser state, the largest
activations and logits of each stage) and errs high; its purpose is to refuse
a run that cannot fit before hours go into it, not to plan to the megabyte.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compress.sizes import bytes_in_memory

_FLOAT = 4  # activations and logits are float32 on the CPU path


@dataclass
class MemoryEstimate:
    weights: int  # one copy of the model as loaded
    peak: int  # the whole run's peak, the original (reference and teacher) included
    peak_stage: str  # where the peak is
    available: int | None  # what the device has free now, plus the already loaded model
    device: str


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: CUDA's free bytes, or MemAvailable from /proc/meminfo (None if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    meminfo = Path("/proc/meminfo")
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _activation_bytes(model: nn.Module, batch: int, seq_len: int, training: bool) -> int:
    """Activations of one forward (kept for backward when ``training``) and its logits."""
    cfg = model.config.get_text_config()
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    mlp = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(cfg, "num_hidden_layers", 1) or 1)
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    tokens = batch * seq_len
    # per token and layer: ~12 hidden-sized and ~4 MLP-sized tensors; eager attention also keeps its scores
    eager = getattr(model.config, "_attn_implementation", None) == "eager"
    per_layer = tokens * (12 * hidden + 4 * mlp) + (batch * heads * seq_len * seq_len * 2 if eager else 0)
    kept = per_layer * (layers if training else 2)
    logits = tokens * vocab * (4 if training else 3)  # logits, log-softmax, teacher's, gradient
    return (kept + logits) * _FLOAT


def estimate(model: nn.Module, stages: list[tuple[str, dict]], eval_batch: int, seq_len: int,
             device: torch.device) -> MemoryEstimate:
    """Peak bytes of a run: the original and the working copy, plus the costliest stage's extras.

    ``stages``: (label, facts) with facts ``kind`` and, as they apply,
    ``batch_size``, ``seq_len``, ``trainable_fraction`` (LoRA trains few).
    """
    weights = bytes_in_memory(model)
    base = 2 * weights  # the original stays as reference and teacher; the stage works on a copy
    peak, where = base + _activation_bytes(model, eval_batch, seq_len, training=False), "evaluation"
    for label, facts in stages:
        extra = 0
        if facts["kind"] == "recover":
            trainable = facts.get("trainable_fraction", 1.0)
            extra = int(3 * weights * trainable)  # gradients and AdamW's two moments
            extra += _activation_bytes(model, facts["batch_size"], seq_len, training=True)
            extra += _activation_bytes(model, facts["batch_size"], seq_len, training=False)  # the teacher's forward
        elif facts["kind"] == "prune":
            extra = weights if facts.get("gradients") else 0
            extra += weights if facts.get("refit") else 0  # the refit's copy of the layers before pruning
            extra += _activation_bytes(model, facts["batch_size"], facts["seq_len"], training=bool(facts.get("gradients")))
        elif facts["kind"] == "quantize":
            extra = weights // 4 + _activation_bytes(model, facts.get("batch_size", 4), seq_len, training=False)
        if base + extra > peak:
            peak, where = base + extra, label
    free = available_bytes(device)
    return MemoryEstimate(weights, peak, where, None if free is None else free + weights, str(device))


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
