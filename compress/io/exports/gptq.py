"""``gptq``: the AutoGPTQ / GPTQModel checkpoint layout that vLLM, TGI and transformers (with gptqmodel) read.

Per module, ``bits`` 4 (int4) or 3 (int3): ``qweight`` int32 ``[in*bits/32,
out]`` (for each output a dense bit stream along the input dimension, the
code of input ``i`` at stream bits ``bits*i ..``, a 3-bit code straddling
two words where it falls there, as AutoGPTQ packs 3 bits; for int4 this is
eight codes per word, our own layout), ``qzeros`` int32 ``[groups,
out*bits/32]`` (packed the same way along the output dimension; the "gptq"
checkpoint format stores zero - 1, so symmetric int4 weights hold 7),
``scales`` float16 ``[groups, out]`` and ``g_idx`` int32 ``[in]`` (the group
of every input; a partial last group is allowed).  ``desc_act`` is false:
act-order GPTQ here fixes group parameters before the column sweep, so the
weights stay in plain order.  The same keys go to ``quantize_config.json``
and to ``quantization_config`` in ``config.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.io.exports.base import Output
from compress.io.exports.common import (
    adapter_or_none,
    short_list,
    state_without_packed,
    write_model_files,
)
from compress.io.exports.hf import load_hint
from compress.io.exports.int_rules import (
    bits_of,
    codes_of,
    int_modules,
    int_problems,
    pack_along_rows,
    packed_inputs,
    zero_points,
)
from compress.quantization.quantizers import Int4Weights
from compress.quantization.quantizers import dequantize as dequantize_codes

WORD_OUT = 32  # AutoGPTQ allocates qzeros as out // 32 * bits words


def problems(model: nn.Module) -> list[str]:
    out = int_problems(model, "gptq")
    mods = int_modules(model)
    if not mods or out:
        return out
    narrow = [n for n, m in mods.items() if m.out_features % WORD_OUT]
    if narrow:
        out.append(f"{short_list(narrow)} have out_features not a multiple of {WORD_OUT}, which GPTQ loaders need for "
                   f"qzeros; prune to multiples of 32 or export as compressed-tensors")
    kinds = {(m.group_size if m.group_size != m.in_features else -1, m.symmetric, bits_of(m)) for m in mods.values()}
    if len(kinds) > 1:
        out.append(f"its quantised modules mix group sizes, symmetry or bits ((group, symmetric, bits): "
                   f"{sorted(kinds)}), but a GPTQ config has one of each; quantise every module alike or export as "
                   f"compressed-tensors")
    if _block_modules(model, mods) is None:
        out.append("different layers quantise different projections, but GPTQ's modules_in_block_to_quantize "
                   "applies to every layer; export as compressed-tensors")
    return out


def _block_modules(model: nn.Module, mods: dict[str, nn.Module]) -> list[str] | None:
    """The projection names (relative to a layer) quantised in every layer; None if layers differ."""
    adapter = adapter_or_none(model)
    if adapter is None:
        return []
    per_layer = []
    for i in range(adapter.num_layers):
        prefix = adapter.layer_name(i) + "."
        per_layer.append(sorted(n[len(prefix):] for n in mods if n.startswith(prefix)))
    return per_layer[0] if all(p == per_layer[0] for p in per_layer) else None


def quantize_config(model: nn.Module, v1: bool) -> dict[str, Any]:
    mods = int_modules(model)
    first = next(iter(mods.values()))
    adapter = adapter_or_none(model)
    lm_head = adapter is not None and adapter.lm_head is not None and any(m is adapter.lm_head for m in mods.values())
    cfg: dict[str, Any] = {
        "quant_method": "gptq",
        "bits": bits_of(first),
        "group_size": -1 if first.group_size == first.in_features else first.group_size,
        "desc_act": False,
        "sym": bool(first.symmetric),
        "true_sequential": True,
        "static_groups": False,
        "damp_percent": 0.01,
        "lm_head": bool(lm_head),
        "checkpoint_format": "gptq" if v1 else "gptq_v2",
        "model_file_base_name": "model",
    }
    block = _block_modules(model, mods)
    all_projections = adapter is not None and len(block or []) == len(adapter.spec.mlp_in) + 5
    if block and not all_projections:
        cfg["modules_in_block_to_quantize"] = [block]
    return cfg


def gptq_state(model: nn.Module, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], bool, dict[str, torch.Tensor]]:
    """Tensors, whether the v1 ("gptq") zero - 1 convention fits, and weights whose scales float16 rounds."""
    mods = int_modules(model)
    tensors = state_without_packed(model, mods, dtype)
    zeros = {n: zero_points(m) for n, m in mods.items()}
    v1 = all(int(z.min()) >= 1 for z in zeros.values())
    expected: dict[str, torch.Tensor] = {}
    for name, m in mods.items():
        K = m.in_features
        scales16 = m.scales.detach().to(torch.float16).cpu()
        bits = bits_of(m)
        tensors[f"{name}.qweight"] = packed_inputs(m).t().contiguous()
        tensors[f"{name}.qzeros"] = pack_along_rows(zeros[name] - 1 if v1 else zeros[name], bits)
        tensors[f"{name}.scales"] = scales16
        tensors[f"{name}.g_idx"] = (torch.arange(K, dtype=torch.int32) // m.group_size).to(torch.int32)
        if not torch.equal(scales16.to(m.scales.dtype), m.scales.detach().cpu()):
            z = None if m.zeros is None else zeros[name].to(torch.float32)
            expected[f"{name}.weight"] = dequantize_codes(Int4Weights(codes_of(m), scales16.to(torch.float32), z,
                                                                      m.group_size, bits))
    return tensors, v1, expected


def write(model: nn.Module, tokenizer: Any, directory: Path, final_path: str, dtype: torch.dtype = torch.float16) -> Output:
    tensors, v1, expected = gptq_state(model, dtype)
    qcfg = quantize_config(model, v1)
    written = write_model_files(model, tokenizer, directory, tensors, dtype=dtype, quantization_config=qcfg)
    (directory / "quantize_config.json").write_text(json.dumps(qcfg, indent=2, sort_keys=True) + "\n")
    notes = [] if v1 else ["some groups have zero point 0, which the original 'gptq' format (zero - 1) cannot store; "
                           "written as checkpoint_format 'gptq_v2' (GPTQModel reads it)."]
    if expected:
        notes.append(f"{len(expected)} modules had scales that float16 (GPTQ's scale dtype) rounds.")
    hint = load_hint(model, final_path) + "  (needs gptqmodel/optimum, or vLLM)"
    return Output(written, hint, notes, {"checkpoint_format": qcfg["checkpoint_format"],
                                       "dtype": str(dtype).removeprefix("torch.")}, expected)
