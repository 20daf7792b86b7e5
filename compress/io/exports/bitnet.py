"""``bitnet``: transformers' own BitNet format (``quant_method: bitnet``, ``linear_class: bitlinear``).

Every ternary module becomes a ``BitLinear``: ``weight`` is uint8
``[out/4, in]`` holding four 2-bit codes ``w + 1`` per byte, packed along
the output dimension in blocks (row ``i*R + r`` of the ternary matrix sits in
bits ``2i..2i+1`` of packed row ``r``, ``R = out/4``), and ``weight_scale``
is ``[1]`` holding ``1 / gamma`` (BitLinear divides by it; float32 whatever
``dtype`` the other floats are stored in).  Every other
``nn.Linear`` is listed in ``modules_to_not_convert`` and kept in float.

transformers' BitLinear always quantises activations to int8 per token, as
BitNet b1.58 does, and rescales as ``acc / (weight_scale * inv)``; compress-lm's
W1.58A8 modules compute exactly that (``compress.kernels.formats``), so an
``a8`` model exports to the same logits (bit for bit in float32).  A model
quantised with 16-bit activations (``a16``) computes differently after this
export: the export measures the gap on a short sample and says it in one note.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.io.exports.base import Output
from compress.io.exports.common import (
    quantized_modules,
    short_list,
    state_without_packed,
    write_model_files,
)
from compress.io.exports.hf import load_hint
from compress.kernels.formats import TernaryFormat
from compress.kernels.formats import unpack_ternary

VALUES_PER_BYTE = 4


def problems(model: nn.Module) -> list[str]:
    packed = quantized_modules(model)
    out: list[str] = []
    if not packed:
        return ["the model has no ternary modules; quantise it first (compress-lm quantize MODEL --method ternary --a8), "
                "or export float weights with --format hf"]
    grouped = [n for n, m in packed.items() if not isinstance(m.format, TernaryFormat)]
    if grouped:
        kinds = " / ".join(sorted({packed[n].method for n in grouped}))
        out.append(f"{short_list(grouped)} hold {kinds} weights, which the BitNet format cannot store; "
                   f"export them as gptq, compressed-tensors or gguf")
    per_row = [n for n, m in packed.items() if isinstance(m.format, TernaryFormat) and m.scales.numel() != 1]
    if per_row:
        out.append(f"{short_list(per_row)} have one scale per output channel, but BitLinear holds one scale per "
                   f"tensor; quantise with per_channel=False")
    odd = [n for n, m in packed.items() if isinstance(m.format, TernaryFormat) and m.out_features % VALUES_PER_BYTE]
    if odd:
        out.append(f"{short_list(odd)} have out_features not divisible by {VALUES_PER_BYTE}, which BitLinear's "
                   f"packed buffer needs; prune to widths that are multiples of 4")
    return out


def pack_rows(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[O, I]`` in 0..2 -> uint8 ``[O/4, I]``, transformers' block layout along dimension 0."""
    O, I = codes.shape
    u = codes.to(torch.uint8).reshape(VALUES_PER_BYTE, O // VALUES_PER_BYTE, I)
    return (u[0] | (u[1] << 2) | (u[2] << 4) | (u[3] << 6)).contiguous()


def quantization_config(model: nn.Module) -> dict[str, Any]:
    packed = quantized_modules(model)
    keep = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in packed)
    return {
        "quant_method": "bitnet",
        "linear_class": "bitlinear",
        "quantization_mode": "offline",
        "use_rms_norm": False,
        "rms_norm_eps": 1e-6,
        "modules_to_not_convert": keep,
    }


def bitnet_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    modules = quantized_modules(model)
    tensors = state_without_packed(model, modules, dtype)
    for name, m in modules.items():
        codes = unpack_ternary(m.qweight.cpu())  # [out, in], values w + 1
        tensors[f"{name}.weight"] = pack_rows(codes)
        gamma = m.scales.detach().to(torch.float64).reshape(1)
        # float32 whatever the stored dtype: one number per module, and 1/gamma in 16 bits would move every output
        tensors[f"{name}.weight_scale"] = (1.0 / gamma).to(torch.float32).cpu()
    return tensors


def write(model: nn.Module, tokenizer: Any, directory: Path, final_path: str, dtype: torch.dtype = torch.bfloat16) -> Output:
    written = write_model_files(model, tokenizer, directory, bitnet_state(model, dtype), dtype=dtype,
                                quantization_config=quantization_config(model))
    notes = []
    details: dict[str, Any] = {"linear_class": "bitlinear", "dtype": str(dtype).removeprefix("torch.")}
    a16 = [m for m in quantized_modules(model).values() if m.activations != "a8"]
    if a16:
        gap = activation_gap(model, tokenizer, a16)
        details["a16_logit_gap"] = gap
        notes.append(f"{len(a16)} modules were quantised with 16-bit activations, but transformers' BitLinear quantises "
                     f"activations to int8 per token: that alone makes the export's logits differ from this model's by {gap:.1%} "
                     f"(relative norm on a short sample); quantise with --a8 to match exactly.")
    return Output(written, load_hint(model, final_path), notes, details)


def activation_gap(model: nn.Module, tokenizer: Any, modules: list[nn.Module]) -> float:
    """||logits with ``modules`` on int8 activations - logits as they are|| / ||logits as they are||.

    On the verify sample (a sentence, or 16 ids without a tokenizer); compress-lm's A8 forward is
    BitLinear's arithmetic, so this is the gap the exported model shows in transformers.
    """
    from compress.io.exports.verify import sample_ids

    ids, _ = sample_ids(model, tokenizer)
    ids = ids.to(next(model.parameters()).device)
    before = [m.activations for m in modules]
    with torch.no_grad():
        as_is = model(input_ids=ids)[0].float()
        try:
            for m in modules:
                m.activations = "a8"
            bitlinear = model(input_ids=ids)[0].float()
        finally:
            for m, a in zip(modules, before):
                m.activations = a
    return float((bitlinear - as_is).norm() / as_is.norm().clamp(min=1e-12))
