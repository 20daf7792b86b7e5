"""The native checkpoint: ``compress.save`` and ``compress.load``.

A checkpoint is a transformers model directory, written by the one writer
``compress.io.model_files`` (``config.json``, ``model.safetensors`` or
shards with ``model.safetensors.index.json``, tokenizer files when given),
plus ``compress.json`` (see ``compress.io.manifest``).  Loading builds the
model skeleton without allocating weights, swaps in pruned shapes and
QuantLinear modules from the manifest, and assigns the stored tensors, so no
full-size float copy is made.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.arch import UnsupportedModelError, adapter_for
from compress.arch.loading import LoadedModel, model_class
from compress.io import remote_code, stock_loaders
from compress.io.atomic import atomic_directory, sha256_file
from compress.io.integrity import check_listed, check_unlisted
from compress.io.manifest import MANIFEST, CheckpointError, Manifest
from compress.io.model_files import INDEX, MAX_SHARD_BYTES, WEIGHTS, stored_state, write_model_dir
from compress.io.outputs import input_paths
from compress.io.storage import DtypeLike, dtype_name, packed_names, upcast_state
from compress.packed import is_packed

DEFAULT_SHARD_BYTES = MAX_SHARD_BYTES


def save(
    model: nn.Module,
    path: str | Path,
    tokenizer: Any = None,
    *,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    dtype: DtypeLike = None,
) -> Path:
    """Write ``model`` (pruned, quantised or plain) as a checkpoint directory.

    Float tensors are stored in ``dtype``: ``"bfloat16"`` (None, the
    default), ``"float16"`` or ``"float32"`` (see ``compress.io.storage``);
    packed weights keep their own layout.  The directory appears only when
    complete; an existing one is replaced only with ``overwrite=True``.
    Returns the directory.
    """
    if getattr(model, "config", None) is None:
        raise CheckpointError(f"{type(model).__name__} has no config; compress.save takes transformers models.")
    stored = dtype_name(dtype)
    tensors, tied = stored_state(model, getattr(torch, stored))
    manifest = _manifest(model, tied)
    manifest.dtype = stored
    # always present: a copy that lost compress.json is then recognised and refused (compress.load_model)
    methods = list(getattr(model.config, "compress_methods", None) or [])
    with atomic_directory(path, overwrite, protect=input_paths(model)) as tmp:
        write_model_dir(model, tokenizer, tmp, tensors, packed=any(is_packed(m, "linear") for m in model.modules()),
                        config_fields={"compress_methods": methods}, max_shard_bytes=max_shard_bytes)
        manifest.files = {
            f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            for f in sorted(tmp.iterdir()) if f.is_file() and f.name != MANIFEST
        }
        manifest.write(tmp)
    return Path(path).expanduser().resolve()


def _manifest(model: nn.Module, tied: dict[str, str]) -> Manifest:
    from compress import __version__

    try:
        adapter = adapter_for(model)
        family, widths = adapter.spec.family, adapter.describe()
    except UnsupportedModelError:
        family, widths = None, None
    quantized = {
        name: m.describe() for name, m in model.named_modules()
        if is_packed(m, "linear")
    }
    embeddings = {
        name: m.describe() for name, m in model.named_modules()
        if is_packed(m, "embedding")
    }
    head = next((name for name, m in model.named_modules() if is_packed(m, "tied_head")), None)
    return Manifest(
        compress_version=__version__,
        family=family,
        architectures=[type(model).__name__],
        methods=list(getattr(model.config, "compress_methods", None) or []),
        layer_widths=widths,
        quantized_modules=quantized,
        tied=tied,
        quantized_embeddings=embeddings,
        tied_head=head,
    )


# -- loading -----------------------------------------------------------------

def load(path: str | Path, *, device: str | torch.device = "cpu", verify: bool = True,
         dtype: DtypeLike = "float32") -> Any:
    """Reopen a checkpoint written by ``compress.save``; returns ``(model, tokenizer)``.

    Every file is checked against the sha256 in ``compress.json`` (unless
    ``verify=False``) and every tensor against the shapes the manifest
    implies; a checkpoint that fails is refused with the file and the reason.
    Stored float tensors (bfloat16 by default) are upcast to ``dtype``
    (float32, as models compute on the CPU; None keeps the stored dtype);
    packed weights and their scales load as stored.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"Checkpoint directory '{directory}' does not exist; give the directory compress.save wrote.")
    manifest = Manifest.read(directory)
    _check_files(directory, manifest, verify)
    compute = None if dtype is None else getattr(torch, dtype_name(dtype))
    model = _skeleton(directory, manifest)
    state = upcast_state(_read_tensors(directory, manifest), compute, packed_names(model))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"The tensors in '{directory}' do not fit the model its config and {MANIFEST} describe ({detail}); "
            f"the checkpoint is inconsistent, save it again."
        ) from err
    if not manifest.tied_head and getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"'{directory}' lacks tensors for {left[:3]}; the checkpoint is incomplete, save it again.")
    return LoadedModel(model.to(device).eval(), _tokenizer(directory))


def _check_files(directory: Path, manifest: Manifest, verify: bool) -> None:
    check_listed(directory, manifest.files, MANIFEST, verify, CheckpointError)
    check_unlisted(directory, manifest.files, MANIFEST, CheckpointError)
    if WEIGHTS not in manifest.files and INDEX not in manifest.files:
        raise CheckpointError(f"{MANIFEST} in '{directory}' lists no weights file; the checkpoint is incomplete, save it again.")
    if "config.json" not in manifest.files:
        raise CheckpointError(f"{MANIFEST} in '{directory}' does not list config.json; the checkpoint is incomplete, save it again.")


def _skeleton(directory: Path, manifest: Manifest) -> nn.Module:
    """The model with parameters on the meta device, pruned widths and QuantLinear modules in place."""
    from accelerate import init_empty_weights

    refused = remote_code.refusal(directory, str(directory))
    if refused is not None:
        raise CheckpointError(str(refused))
    widths = manifest.layer_widths
    try:
        config = stock_loaders.read_config(directory)
        if manifest.architectures and list(getattr(config, "architectures", None) or []) != manifest.architectures:
            raise CheckpointError(f"'{directory / MANIFEST}' field architectures {str(manifest.architectures)[:80]} differs "
                                  f"from config.json's; the checkpoint is inconsistent, save it again.")
        if widths:  # before building: a config claiming a million layers would take long to build
            _check_widths(directory, widths, getattr(config.get_text_config(), "num_hidden_layers", None))
        with init_empty_weights(include_buffers=False):  # buffers such as rotary tables are computed, not stored
            cls = model_class(config)
            model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError, RuntimeError) as err:
        if remote_code.is_remote_code_error(err):
            raise CheckpointError(str(remote_code.remote_code_refused(str(directory), "transformers found custom code"))) from None
        raise CheckpointError(f"{directory / 'config.json'} does not describe a model transformers can build "
                              f"({_first_line(err)}); the checkpoint is corrupted, save it again.") from None
    if widths:
        adapter = adapter_for(model)
        _check_widths(directory, widths, adapter.num_layers)
        for i in range(adapter.num_layers):
            adapter.resize_layer(i, widths["num_heads"][i], widths["num_kv_heads"][i], widths["mlp_width"][i])
    if manifest.quantized_modules:
        from compress.quantization.linear import QuantLinear
    if manifest.quantized_embeddings:
        _quantized_embeddings(model, directory, manifest)
    for name, spec in manifest.quantized_modules.items():
        spec = dict(spec)
        spec["scale_dtype"] = getattr(torch, spec.get("scale_dtype", "float16"))
        try:
            old = model.get_submodule(name)
            if (getattr(old, "in_features", None), getattr(old, "out_features", None)) != (spec["in_features"], spec["out_features"]):
                raise ValueError(f"it is {getattr(old, 'in_features', '?')} x {getattr(old, 'out_features', '?')} in the model, "
                                 f"{spec['in_features']} x {spec['out_features']} here")
            model.set_submodule(name, QuantLinear(**spec, device="meta"))
        except (AttributeError, TypeError, ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"'{directory / MANIFEST}' field quantized_modules[{name[:80]!r}] does not fit the model "
                                  f"({_first_line(err)}); the checkpoint is inconsistent, save it again.") from None
    return model


def _quantized_embeddings(model: nn.Module, directory: Path, manifest: Manifest) -> None:
    from compress.quantization.embedding import QuantEmbedding, TiedQuantHead

    for name, spec in manifest.quantized_embeddings.items():
        spec = dict(spec)
        spec["scale_dtype"] = getattr(torch, spec.get("scale_dtype", "float16"))
        try:
            old = model.get_submodule(name)
            shape = (spec["num_embeddings"], spec["embedding_dim"])
            have = tuple(old.weight.shape) if hasattr(old, "weight") else (getattr(old, "out_features", "?"), getattr(old, "in_features", "?"))
            if have != shape:
                raise ValueError(f"it is {have[0]} x {have[1]} in the model, {shape[0]} x {shape[1]} here")
            model.set_submodule(name, QuantEmbedding(**spec, device="meta"))
        except (AttributeError, TypeError, ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"'{directory / MANIFEST}' field quantized_embeddings[{name[:80]!r}] does not fit the "
                                  f"model ({_first_line(err)}); the checkpoint is inconsistent, save it again.") from None
    head = manifest.tied_head
    if head:
        embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if not isinstance(embed, QuantEmbedding):
            raise CheckpointError(f"'{directory / MANIFEST}' field tied_head names {head[:80]!r} but the input embedding "
                                  f"is not quantised; the checkpoint is inconsistent, save it again.")
        try:
            model.get_submodule(head)
        except AttributeError:
            raise CheckpointError(f"'{directory / MANIFEST}' field tied_head names {head[:80]!r}, which the model lacks; "
                                  f"the checkpoint is inconsistent, save it again.") from None
        model.set_submodule(head, TiedQuantHead(embed))


def _check_widths(directory: Path, widths: dict[str, Any], layers: Any) -> None:
    """layer_widths against the config's layer count, and heads a whole number of kv groups."""
    if len(widths["num_heads"]) != layers:
        raise CheckpointError(f"'{directory / MANIFEST}' field layer_widths lists {len(widths['num_heads'])} layers but "
                              f"config.json has {str(layers)[:20]}; the checkpoint is inconsistent, save it again.")
    for i, (heads, kv) in enumerate(zip(widths["num_heads"], widths["num_kv_heads"])):
        if kv < 1 or heads % kv:
            raise CheckpointError(f"'{directory / MANIFEST}' field layer_widths gives layer {i} {heads} heads and {kv} kv "
                                  f"heads, not a whole number of heads per kv head; the checkpoint is corrupted, save it again.")


def _read_tensors(directory: Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = [WEIGHTS] if WEIGHTS in manifest.files else _shard_files(directory, manifest)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(directory / f))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{directory / f} is not a readable safetensors file ({_first_line(err)}); save the "
                                  f"checkpoint again.") from err
    for alias, name in manifest.tied.items():
        if name not in state:
            raise CheckpointError(f"'{directory / MANIFEST}' field tied[{alias[:80]!r}] names {name[:80]!r}, which the "
                                  f"weights do not hold; the checkpoint is inconsistent, save it again.")
        state[alias] = state[name]
    return state


def _shard_files(directory: Path, manifest: Manifest) -> list[str]:
    try:
        weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
        files = sorted({str(f) for f in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise CheckpointError(f"{directory / INDEX} has no readable weight_map; save the checkpoint again.") from None
    missing = [f for f in files if f not in manifest.files]
    if missing:
        raise CheckpointError(f"{directory / INDEX} names {missing[0][:80]!r}, which {MANIFEST} does not list; the "
                              f"checkpoint is inconsistent, save it again.")
    return files


def _tokenizer(directory: Path) -> Any:
    if not any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    from transformers import AutoTokenizer

    try:
        # the config as compress-lm reads it: a checkpoint with packed weights names a model type transformers lacks
        config = stock_loaders.read_config(directory)
        return AutoTokenizer.from_pretrained(directory, config=config, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for bad tokenizer files
        if remote_code.is_remote_code_error(err):
            raise CheckpointError(str(remote_code.remote_code_refused(str(directory), "its tokenizer needs custom code"))) from None
        raise CheckpointError(f"The tokenizer files in '{directory}' do not load ({_first_line(err)}); save the "
                              f"checkpoint again.") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]
