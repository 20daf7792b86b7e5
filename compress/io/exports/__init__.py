"""Exports to formats other tools load: native, hf, bitnet, gptq, compressed-tensors, gguf.

    from compress.io.exports import export, export_problems
    problems = export_problems(model, "bitnet")          # [] when the model fits the format
    report = export(model, tokenizer, "out/bitnet", "bitnet", verify=True)
    print(report.table())                                 # files, sizes, bits per weight, how to load it

Each format lives in its own module (``hf``, ``bitnet``, ``gptq``,
``compressed_tensors``, ``gguf_file``); ``verify`` loads a written export
with a loader that is not compress-lm's and compares logits.  Exports never
quantise: a model is exported as it is (see ``export_problems``).  Output
directories are written atomically, carry ``compress-export.json`` (every
file's sha256; it marks them as compress-lm's own) and are never replaced
without ``overwrite=True``, nor with it unless they are compress-lm outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from compress.io.atomic import atomic_directory, check_output_dir
from compress.io.exports import bitnet, compressed_tensors, gguf_file, gptq, hf
from compress.io.exports.base import Output
from compress.io.exports.common import ExportError, Written, account, float_dtype, short_list, unique_state
from compress.io.exports.gguf_file import GGUF_TYPES
from compress.io.exports.report import ExportReport
from compress.io.integrity import write_export_manifest
from compress.io.outputs import input_paths
from compress.packed import is_packed

__all__ = ["EXPORT_FORMATS", "GGUF_TYPES", "ExportError", "ExportReport", "export", "export_problems"]

EXPORT_FORMATS = ("native", "hf", "bitnet", "gptq", "compressed-tensors", "gguf")

_PROBLEMS = {"hf": hf.problems, "bitnet": bitnet.problems, "gptq": gptq.problems,
             "compressed-tensors": compressed_tensors.problems}
_WRITERS = {"hf": hf.write, "bitnet": bitnet.write, "gptq": gptq.write,
            "compressed-tensors": compressed_tensors.write, "gguf": gguf_file.write}


def _format(format: str) -> str:
    fmt = str(format).strip().lower()
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"Unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    return fmt


def export_problems(model: nn.Module, format: str, *, gguf_type: Optional[str] = None) -> list[str]:
    """Every reason ``model`` cannot be exported as ``format`` (empty when it can), each with its fix.

    Cheap: reads shapes and module types only, so a recipe can call it before
    a long run.  ``gguf_type`` (gguf only) checks a GGUF type other than the
    default for this model.
    """
    fmt = _format(format)
    if getattr(model, "config", None) is None:
        return [f"{type(model).__name__} is not a transformers model (it has no config); exports take the models "
                f"compress.load_model and compress.load return"]
    if fmt == "native":
        return []
    from compress.quantization.qat import FakeQuantLinear

    fake = [n for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if fake:  # their float latent weights are not what the model computes
        return [f"{short_list(fake)} are still fake-quantised for training; pack them first with compress.quantize(model) "
                f"(or compress-lm quantize), then export"]
    if fmt == "gguf":
        return gguf_file.problems(model, gguf_type)
    embeddings = [n for n, m in model.named_modules() if is_packed(m, "embedding")]
    if embeddings and fmt != "hf":  # hf stores floats: it dequantises tables as it dequantises linears
        return [f"{short_list(embeddings)} hold quantised embeddings, which the {fmt} format has no type for; export "
                f"as gguf, hf (dequantised) or native, or quantise without embeddings (--embeddings none)"]
    return _PROBLEMS[fmt](model)


def export(
    model: nn.Module,
    tokenizer: Any,
    output_dir: str | Path,
    format: str,
    *,
    overwrite: bool = False,
    gguf_type: Optional[str] = None,
    verify: bool = False,
    dtype: Any = None,
) -> ExportReport:
    """Write ``model`` (and ``tokenizer``) to ``output_dir`` in ``format``; return what was written.

    ``format``: ``native`` (compress.save's checkpoint), ``hf`` (float
    weights for ``from_pretrained``), ``bitnet`` (transformers' BitNet
    format, ternary models), ``gptq`` / ``compressed-tensors`` (int4
    models), ``gguf`` (llama.cpp; ``gguf_type`` one of f16, q8_0, q4_0,
    q4_1, tq2_0, tq1_0, default chosen from the model).  ``verify=True``
    loads the result with a loader that is not compress-lm's in a fresh
    process and compares logits before the directory appears.  ``dtype``:
    what float tensors are stored in, ``"bfloat16"``, ``"float16"`` or
    ``"float32"``; None: the format's default (bfloat16; float16 for gptq
    and gguf, whose loaders compute in float16).  Raises ``ExportError``
    listing every reason the model does not fit the format.
    """
    from compress.io.storage import stored_dtype

    fmt = _format(format)
    stored = stored_dtype(dtype, fmt)
    if gguf_type is not None and fmt != "gguf":
        raise ExportError(f"gguf_type applies to the gguf format only, not {fmt}; drop it (--gguf-type) or use --format gguf.")
    if gguf_type is not None:
        gguf_type = str(gguf_type).strip().lower()
    problems = export_problems(model, fmt, gguf_type=gguf_type)
    if fmt == "gguf" and not problems:
        from compress.io.exports.gguf_vocab import tokenizer_problems

        problems = tokenizer_problems(tokenizer)
    if problems:
        raise ExportError(f"This model cannot be exported as {fmt}: " + "; ".join(problems) + ".")
    target = Path(output_dir).expanduser().resolve()
    protect = input_paths(model)
    check_output_dir(target, overwrite, protect)
    if fmt == "native":
        return _native(model, tokenizer, target, overwrite, verify, stored)
    options = {"gguf_type": gguf_type, "dtype": stored} if fmt == "gguf" else {"dtype": stored}
    with atomic_directory(target, overwrite, protect) as tmp:
        out = _WRITERS[fmt](model, tokenizer, tmp, str(target), **options)
        write_export_manifest(tmp, fmt)
        check = _verify(fmt, tmp, model, tokenizer, out) if verify else None
        sizes = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
    return _report(fmt, target, sizes, out, check)


def _verify(fmt: str, directory: Path, model: nn.Module, tokenizer: Any, out: Output) -> str:
    from compress.io.exports import verify

    return verify.check(fmt, directory, model, tokenizer, out)


def _report(fmt: str, target: Path, sizes: dict[str, int], out: Output, check: Optional[str]) -> ExportReport:
    w = out.written
    weights = w.layer_weights + w.other_weights
    return ExportReport(
        format=fmt,
        path=target,
        sizes=sizes,
        parameters=weights,
        bits_per_weight=8 * (w.layer_bytes + w.other_bytes) / max(weights, 1),
        layer_bits_per_weight=(8 * w.layer_bytes / w.layer_weights) if w.layer_weights else None,
        load=out.load,
        notes=list(out.notes),
        details=dict(out.details),
        check=check,
    )


def _native(model: nn.Module, tokenizer: Any, target: Path, overwrite: bool, verify: bool, dtype: Any) -> ExportReport:
    import copy

    import torch

    from compress.io.checkpoint import load, save
    from compress.io.storage import round_model_

    save(model, target, tokenizer, overwrite=overwrite, dtype=dtype)
    written = Written()
    account(model, unique_state(model)[0], written)
    check = None
    if verify:
        from compress.io.exports.verify import sample_ids

        ids, _ = sample_ids(model, tokenizer)
        again = load(target, dtype=float_dtype(model)).model  # computing as the model does
        stored = round_model_(copy.deepcopy(model), dtype)  # what the file holds: floats rounded to the stored dtype
        with torch.no_grad():
            diff = float((again(input_ids=ids)[0].float() - stored(input_ids=ids)[0].float()).abs().max())
        if diff != 0.0:
            raise ExportError(f"The native checkpoint in '{target}' reloads with logits {diff:.3g} away from the model; "
                              f"this is a bug, please report it.")
        check = (f"reloaded with compress.load (native checkpoints are compress-lm's own format): identical logits to the "
                 f"model with its floats rounded to {str(dtype).removeprefix('torch.')} as stored")
    sizes = {p.name: p.stat().st_size for p in target.iterdir() if p.is_file()}
    out = Output(written, f"compress.load({str(target)!r})")
    return _report("native", target, sizes, out, check)
