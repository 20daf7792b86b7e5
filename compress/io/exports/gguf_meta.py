"""``general.*`` in a GGUF file: who the model is, as llama.cpp and the hub show it.

The source model's name, basename, finetune, organisation and licence are
recorded when a model is loaded (``record_source``, into the config as
``SOURCE_KEY``, so checkpoints carry them through pruning and quantisation)
and written back by the GGUF writer; the size label is counted from the
weights actually written (a pruned model is smaller than its source).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

SOURCE_KEY = "source_model"  # config attribute; saved in config.json by save_pretrained
_FIELDS = ("name", "basename", "finetune", "version", "organization", "license")


def record_source(model: nn.Module, *, gguf_file: Optional[Path] = None, directory: Optional[Path] = None,
                  hub_id: Optional[str] = None) -> None:
    """Remember where ``model`` came from, unless its config already says (a compress-lm checkpoint)."""
    config = model.config
    if getattr(config, SOURCE_KEY, None):
        return
    info = {}
    try:
        if gguf_file is not None:
            info = _from_gguf(gguf_file)
        elif directory is not None or hub_id is not None:
            info = _from_card(directory, hub_id)
    except Exception:  # a model card or header we cannot parse only costs the metadata, never the load
        info = {}
    if info:
        setattr(config, SOURCE_KEY, info)


def _from_gguf(path: Path) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for key in _FIELDS:
        field = reader.get_field(f"general.{key}")
        if field is not None:
            out[key] = str(field.contents())
    return out


def _from_card(directory: Optional[Path], hub_id: Optional[str]) -> dict[str, Any]:
    """What llama.cpp's converter reads: the README model card and config, else the name (org/Name-135M-Instruct)."""
    import gguf

    meta = gguf.Metadata.load(None, directory, None, 0) if directory is not None else gguf.Metadata()
    if hub_id:
        name, org, basename, finetune, version, _ = gguf.Metadata.get_model_id_components(hub_id, 0)
        meta.name = meta.name or name
        meta.organization = meta.organization or org
        meta.basename = meta.basename or basename
        meta.finetune = meta.finetune or finetune
        meta.version = meta.version or version
    return {k: getattr(meta, k) for k in _FIELDS if isinstance(getattr(meta, k, None), str) and getattr(meta, k)}


def add_general(writer: Any, model: nn.Module, parameters: int, arch_name: str, gguf_type: str) -> None:
    """general.* keys: the source model's identity, this file's size label and what compress-lm did."""
    import gguf

    config = model.config.get_text_config()
    info = dict(getattr(model.config, SOURCE_KEY, None) or getattr(config, SOURCE_KEY, None) or {})
    # transformers keeps a GGUF's general.name here when it loads one
    name = info.get("name") or getattr(config, "_model_name_or_path", None) or info.get("basename") or arch_name
    writer.add_name(str(name))
    for key in ("basename", "finetune", "version", "organization", "license"):
        if info.get(key):
            getattr(writer, f"add_{key}")(str(info[key]))
    writer.add_size_label(gguf.size_label(int(parameters), 0, 0, 0))
    writer.add_description(f"{name}, written by compress-lm as {gguf_type.upper()}")
