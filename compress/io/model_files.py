"""The one writer of transformers model directories: config, weights, tokenizer.

``compress.save`` (the native checkpoint, ``compress.io.checkpoint``) and
every transformers-format export (``hf``, ``bitnet``, ``gptq``,
``compressed-tensors``; ``compress.io.exports``) write their directories
through ``write_model_dir``:

- ``config.json`` (+ ``generation_config.json``): the model's config with its
  class in ``architectures``; when pruning left layers of different widths,
  ``modeling_compress.py`` named in ``auto_map`` (``compress.io.remote_code``);
  for compress-lm's own packed layout, a config stock layers refuse
  (``compress.io.stock_loaders``);
- ``model.safetensors``, or shards of at most ``max_shard_bytes`` plus
  ``model.safetensors.index.json``;
- the tokenizer's files.

The caller writes into the temporary directory ``compress.io.atomic.atomic_directory``
yields, which becomes the target only when complete, so no reader sees a
half-written directory.  Tensors arrive in the dtype they are stored in:
``stored_state`` casts a model's floats to it (``compress.io.storage``) and
leaves packed data as it is.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from compress.arch import UnsupportedModelError, adapter_for
from compress.io import remote_code, stock_loaders
from compress.io.state import unique_state
from compress.io.storage import cast_state, packed_names

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 2 * 2**30
# config keys one writer sets from the model as written; a copy read from an earlier directory may hold stale ones
_DERIVED_KEYS = ("quantization_config", remote_code.WIDTHS_KEY, "auto_map")


def stored_state(model: nn.Module, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's tensors without tied duplicates, floats in the stored ``dtype`` (packed scales and zeros
    keep theirs), and the aliases (tied name -> kept name)."""
    tensors, tied = unique_state(model)
    return cast_state(tensors, dtype, packed_names(model)), tied


def write_model_dir(model: nn.Module, tokenizer: Any, directory: Path, tensors: dict[str, torch.Tensor], *,
                    dtype: Optional[torch.dtype] = None, quantization_config: Optional[dict[str, Any]] = None,
                    packed: bool = False, config_fields: Optional[Mapping[str, Any]] = None,
                    max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Config, weights and tokenizer of ``model`` into ``directory`` (see the module); the file names written."""
    files = write_config(model, directory, dtype=dtype, quantization_config=quantization_config, packed=packed,
                         config_fields=config_fields)
    files += save_tokenizer(tokenizer, directory)
    files += write_safetensors(tensors, directory, max_shard_bytes)
    return files


def write_config(model: nn.Module, directory: Path, *, dtype: Optional[torch.dtype] = None,
                 quantization_config: Optional[dict[str, Any]] = None, packed: bool = False,
                 config_fields: Optional[Mapping[str, Any]] = None) -> list[str]:
    """``config.json`` (+ ``generation_config.json``) for ``model``; the file names written.

    ``dtype``: recorded as the config's dtype (None leaves the model's).
    ``quantization_config``: the loader's quantisation section (gptq,
    compressed-tensors, bitnet).  ``packed``: the weights are compress-lm's
    own packed layout, which stock layers cannot hold, so the config names a
    model type only compress-lm loads.  Otherwise, layers of different widths
    get the shipped modeling file.  ``config_fields``: further attributes set
    on the config.
    """
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    if dtype is not None:
        config.dtype = dtype
    for stale in _DERIVED_KEYS:
        if hasattr(config, stale):
            delattr(config, stale)
    for key, value in (config_fields or {}).items():
        setattr(config, key, value)
    files = [CONFIG]
    adapter = _adapter_or_none(model)
    if adapter is not None and not packed:
        widths = remote_code.layer_widths(adapter)
        if not remote_code.is_uniform(widths):
            setattr(config, remote_code.WIDTHS_KEY, widths)
            module_file = f"{remote_code.MODULE}.py"
            (directory / module_file).write_text(remote_code.modeling_file(adapter, type(model).__name__))
            config.auto_map = {remote_code.auto_map_key(model): f"{remote_code.MODULE}.{remote_code.CLASS}"}
            files.append(module_file)
    if quantization_config is not None:
        config.quantization_config = quantization_config
    config.save_pretrained(directory)
    if packed:  # stock layers would load it with random weights (see stock_loaders)
        stock_loaders.refuse_stock_layers(directory)
        files.append(f"{stock_loaders.MODULE}.py")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
        files.append("generation_config.json")
    return files


def shard(tensors: dict[str, torch.Tensor], max_bytes: int = MAX_SHARD_BYTES) -> dict[str, dict[str, torch.Tensor]]:
    """File name -> tensors: one ``model.safetensors``, or numbered shards of at most ``max_bytes`` (a larger
    tensor gets a shard of its own), in the order given."""
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        if parts[-1] and size + t.nbytes > max_bytes:
            parts.append({})
            size = 0
        parts[-1][name] = t.contiguous()
        size += t.nbytes
    if len(parts) == 1:
        return {WEIGHTS: parts[0]}
    n = len(parts)
    return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": p for i, p in enumerate(parts)}


def write_safetensors(tensors: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """``model.safetensors`` (or shards plus the index transformers reads); the file names written."""
    from safetensors.torch import save_file

    shards = shard(tensors, max_shard_bytes)
    for file, part in shards.items():
        save_file(part, directory / file, metadata={"format": "pt"})
    if len(shards) == 1:
        return list(shards)
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": {k: f for f, part in shards.items() for k in part}}
    (directory / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    return [*shards, INDEX]


def save_tokenizer(tokenizer: Any, directory: Path) -> list[str]:
    """The tokenizer's files (none without a tokenizer); their names."""
    if tokenizer is None:
        return []
    return [Path(f).name for f in tokenizer.save_pretrained(directory) if Path(f).is_file()]


def _adapter_or_none(model: nn.Module):
    try:
        return adapter_for(model)
    except UnsupportedModelError:
        return None
