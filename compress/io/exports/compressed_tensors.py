"""``compressed-tensors``: the pack-quantized int4 / int3 format of llm-compressor and vLLM.

Per int4 or int3 module (``bits`` 4 or 3): ``weight_packed`` int32 ``[out,
ceil(in*bits/32)]`` (a dense bit stream along the input dimension, each code
stored as signed value + 2**(bits-1), i.e. our unsigned codes; for int4 it is
our ``qweight`` transposed), ``weight_scale`` ``[out, groups]``,
``weight_shape`` int64 ``[out, in]`` and, for asymmetric weights,
``weight_zero_point`` int32 ``[ceil(out*bits/32), groups]`` (packed along the
output dimension, signed zero + 2**(bits-1), i.e. our zero point).  vLLM's
kernels take 4 and 8 bits; int3 loads through transformers, which unpacks it.
``quantization_config`` has one config group per distinct scheme
(``strategy: group`` or ``channel``), the float linears in ``ignore``.
compressed-tensors needs the group size to divide ``in_features``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.io.exports.base import Output
from compress.io.exports.common import (
    short_list,
    state_without_packed,
    write_model_files,
)
from compress.io.exports.hf import load_hint
from compress.io.exports.int_rules import bits_of, int_modules, int_problems, pack_along_rows, packed_inputs, zero_points

FORMAT = "pack-quantized"


def problems(model: nn.Module) -> list[str]:
    out = int_problems(model, "compressed-tensors")
    partial = [n for n, m in int_modules(model).items() if m.in_features % m.group_size]
    if partial:
        out.append(f"{short_list(partial)} have a partial last group (in_features not a multiple of the group size), "
                   f"which compressed-tensors refuses; quantise with a group size that divides in_features "
                   f"(e.g. 64 for 576) or export as gptq")
    return out


def _scheme(m: nn.Module) -> tuple:
    channel = m.group_size == m.in_features
    return ("channel" if channel else "group", None if channel else m.group_size, bool(m.symmetric), bits_of(m))


def quantization_config(model: nn.Module) -> dict[str, Any]:
    mods = int_modules(model)
    schemes: dict[tuple, list[str]] = {}
    for name, m in mods.items():
        schemes.setdefault(_scheme(m), []).append(name)
    groups = {}
    for i, ((strategy, group_size, symmetric, bits), names) in enumerate(schemes.items()):
        groups[f"group_{i}"] = {
            "targets": ["Linear"] if len(schemes) == 1 else names,
            "weights": {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": strategy,
                        "group_size": group_size, "dynamic": False, "actorder": None, "observer": "minmax"},
            "input_activations": None,
            "output_activations": None,
            "format": FORMAT,
        }
    ignore = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in mods)
    try:
        import compressed_tensors

        version = compressed_tensors.__version__
    except ImportError:
        version = None
    return {"quant_method": "compressed-tensors", "format": FORMAT, "quantization_status": "compressed",
            "config_groups": groups, "ignore": ignore, "kv_cache_scheme": None, "global_compression_ratio": None,
            "version": version}


def compressed_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    modules = int_modules(model)
    tensors = state_without_packed(model, modules, dtype)
    for name, m in modules.items():
        tensors[f"{name}.weight_packed"] = packed_inputs(m)
        tensors[f"{name}.weight_scale"] = m.scales.detach().cpu().t().contiguous()
        tensors[f"{name}.weight_shape"] = torch.tensor([m.out_features, m.in_features], dtype=torch.int64)
        if not m.symmetric:
            tensors[f"{name}.weight_zero_point"] = pack_along_rows(zero_points(m), bits_of(m)).t().contiguous()
    return tensors


def write(model: nn.Module, tokenizer: Any, directory: Path, final_path: str, dtype: torch.dtype = torch.bfloat16) -> Output:
    written = write_model_files(model, tokenizer, directory, compressed_state(model, dtype), dtype=dtype,
                                quantization_config=quantization_config(model))
    asymmetric = any(not m.symmetric for m in int_modules(model).values())
    notes = []
    hint = load_hint(model, final_path) + "  (needs the compressed-tensors package), or vllm serve"
    if asymmetric:
        # transformers 5.23 with compressed-tensors 0.20 sizes the zero points unpacked while loading and refuses
        # the packed ones the compressor writes (vllm-project/llm-compressor#1618); its dequantize path reads them.
        hint = hint.replace(")  (needs", ", quantization_config=transformers.CompressedTensorsConfig(dequantize=True))  (needs", 1)
        notes.append("asymmetric pack-quantized weights: transformers' default compressed load refuses their packed zero "
                     "points (llm-compressor#1618); load with CompressedTensorsConfig(dequantize=True) as shown.")
    return Output(written, hint, notes, {"format": FORMAT, "asymmetric": asymmetric,
                                     "dtype": str(dtype).removeprefix("torch.")})
