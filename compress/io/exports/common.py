"""What every export shares: the error type, the model's packed modules, its tensors, what was written.

Nothing here knows a target format; the format modules (``hf``, ``bitnet``,
``gptq``, ``compressed_tensors``, ``gguf_file``) build on it.  The
transformers directory itself (config, safetensors, tokenizer) is written by
``compress.io.model_files``, the writer the native checkpoint uses too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from compress.arch import UnsupportedModelError, adapter_for
from compress.errors import CompressError
from compress.io import remote_code
from compress.io.model_files import stored_state, write_model_dir
from compress.io.state import unique_state
from compress.packed import is_packed


class ExportError(CompressError):
    """A model that cannot be written in the format asked for, or an export that failed its check."""


# -- what the model holds ----------------------------------------------------

def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> packed linear module (``QuantLinear``), in model order."""
    return {n: m for n, m in model.named_modules() if is_packed(m, "linear")}


def float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's float weights (its embeddings), which exports write floats in."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def adapter_or_none(model: nn.Module):
    try:
        return adapter_for(model)
    except UnsupportedModelError:
        return None


def is_uniform(model: nn.Module) -> bool:
    """True unless pruning left layers of different widths."""
    adapter = adapter_or_none(model)
    return adapter is None or remote_code.is_uniform(remote_code.layer_widths(adapter))


def short_list(names: list[str], limit: int = 4) -> str:
    """``a, b, c and 12 more``: module lists in one-sentence messages."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# -- tensors -----------------------------------------------------------------

@dataclass
class Written:
    """Bytes and logical weights one export wrote, split by part of the model."""

    layer_bytes: int = 0  # decoder-layer linear weights, with their scales / zero points
    layer_weights: int = 0
    other_bytes: int = 0  # embeddings, output head, norms, biases
    other_weights: int = 0

    def add(self, part: str, nbytes: int, weights: int = 0) -> None:
        if part == "layers":
            self.layer_bytes += nbytes
            self.layer_weights += weights
        else:
            self.other_bytes += nbytes
            self.other_weights += weights


def layer_linear_names(model: nn.Module) -> set[str]:
    """Full names of the projections inside the decoder layers (empty for unknown families)."""
    adapter = adapter_or_none(model)
    return set(adapter.projection_names()) if adapter is not None else set()


def state_without_packed(model: nn.Module, modules: dict[str, nn.Module], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``unique_state`` with float tensors in ``dtype`` (the stored dtype), less the packed buffers (qweight,
    scales, zeros) of ``modules``: each format then adds those modules' weights in its own layout."""
    tensors = stored_state(model, dtype)[0]
    for name, module in modules.items():
        for buf in ("qweight", "scales", "zeros"):
            tensors.pop(f"{name}.{buf}", None)
        if module.bias is not None:
            tensors[f"{name}.bias"] = module.bias.detach().to(dtype).cpu()
    return tensors


def quantized_embeddings(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> quantised embedding table (``QuantEmbedding``: an input embedding or an untied head), in model order."""
    return {n: m for n, m in model.named_modules() if is_packed(m, "embedding")}


def float_state(model: nn.Module, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """The state dict with every packed module replaced by its dequantised ``weight`` (no tied duplicates): linears
    and embedding tables (a tied head reads the embedding's, so the tie stays one tensor)."""
    dtype = dtype or float_dtype(model)
    modules = quantized_modules(model)
    tensors = state_without_packed(model, modules, dtype)
    for name, module in modules.items():
        tensors[f"{name}.weight"] = module.dequantize_weight(dtype).cpu()
    for name, table in quantized_embeddings(model).items():
        for buf, _ in table.named_buffers(recurse=False):
            tensors.pop(f"{name}.{buf}", None)
        tensors[f"{name}.weight"] = table.dequantize_weight(dtype).cpu()
    return tensors


def write_model_files(model: nn.Module, tokenizer: Any, directory: Path, tensors: dict[str, torch.Tensor], *,
                      dtype: torch.dtype, quantization_config: Optional[dict[str, Any]] = None) -> Written:
    """``config.json``, the safetensors and the tokenizer files of a transformers directory (the one writer,
    ``compress.io.model_files``, with the stored ``dtype`` in the config); what was written."""
    write_model_dir(model, tokenizer, directory, tensors, dtype=dtype, quantization_config=quantization_config)
    written = Written()
    account(model, tensors, written)
    return written


def account(model: nn.Module, tensors: dict[str, torch.Tensor], written: Written) -> None:
    """Add each tensor's bytes to ``written``: decoder-layer linears (with their scales) apart from the rest.

    A layer linear counts its logical ``in x out`` weights once, whatever
    tensors store it; other float tensors count their elements.
    """
    layers = layer_linear_names(model)
    counted: set[str] = set()
    for name, t in tensors.items():
        module, _, leaf = name.rpartition(".")
        if module in layers:
            weights = t.numel() if leaf == "bias" else 0
            if module not in counted and leaf != "bias":
                counted.add(module)
                m = model.get_submodule(module)
                weights = m.in_features * m.out_features
            written.add("layers", t.nbytes, weights)
        else:
            written.add("other", t.nbytes, t.numel() if t.is_floating_point() else 0)
