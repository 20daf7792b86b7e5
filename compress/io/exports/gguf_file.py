"""``gguf``: one GGUF file for llama.cpp and the tools built on it.

Types (``gguf_type``): ``mixed`` writes each tensor in its own type (int4
symmetric Q4_0, asymmetric Q4_1, ternary TQ2_0 where rows are multiples of
256, else an exact Q4_0; float F16), the default for a model whose layers
hold more than one kind (a size budget's); ``f16`` and ``q8_0`` for float (dense or pruned)
models; ``q4_0`` / ``q4_1`` for int4 models (symmetric / asymmetric; group
sizes that are multiples of 32), written from our codes without a second
rounding; ``tq2_0`` / ``tq1_0`` for ternary models (2.06 / 1.69 bits per
weight, rows must be multiples of 256; a row that is not falls back to an
exact Q4_0 and the report says which).  Embeddings and an untied output head
are F16 (Q8_0 under ``q8_0``; BF16 or F32 with ``dtype``); norms and biases F32.
Quantised embeddings and output heads (``compress.quantization.embedding``) are
written from their codes: int8 rows as Q8_0, int4 groups as Q4_0 (groups
that are multiples of 32 along the row, float16 scales), without a second
rounding.

A model whose layers were pruned to different widths is written as
llama.cpp's ``deci`` architecture, which reads per-layer head counts and
feed-forward widths (``*.attention.head_count`` etc. as arrays).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from compress.arch import adapter_for
from compress.io.exports import gguf_arch, gguf_blocks, gguf_meta
from compress.io.exports.base import Output
from compress.io.exports.common import (
    Written,
    layer_linear_names,
    quantized_modules,
    short_list,
    unique_state,
)
from compress.io.exports.gguf_vocab import add_tokenizer
from compress.kernels.formats import GroupedIntFormat, TernaryFormat, unpack_ternary
from compress.packed import is_packed

GGUF_TYPES = ("f16", "q8_0", "q4_0", "q4_1", "tq2_0", "tq1_0", "mixed")
_INT4_TYPES = ("q4_0", "q4_1")
_TERNARY_TYPES = ("tq2_0", "tq1_0")
MIXED = "mixed"  # each tensor in its own type: int4 sym Q4_0, asym Q4_1, ternary TQ2_0, float F16 (or --dtype)
_FILE_TYPE = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1",
              "tq2_0": "MOSTLY_TQ2_0", "tq1_0": "MOSTLY_TQ1_0"}


def own_type(m: nn.Module) -> str:
    """The GGUF type that stores a packed linear as it is: q4_0 / q4_1 for symmetric / asymmetric int4 and int3
    (exactly: GGUF has no 3-bit type for our groups), else tq2_0."""
    if isinstance(m.format, GroupedIntFormat):
        return "q4_0" if m.symmetric else "q4_1"
    return "tq2_0"


def _kinds(model: nn.Module) -> set[str]:
    """What the decoder layers' linears hold: their own GGUF types (q4_0, q4_1, tq2_0) and 'float'."""
    packed = quantized_modules(model)
    out = {own_type(m) for m in packed.values()}
    if packed and any(n not in packed for n in layer_linear_names(model)):
        out.add("float")
    return out


def default_type(model: nn.Module) -> str:
    """mixed for models whose layers hold more than one kind of weight (a size budget's: int4 groups, ternary,
    float), else tq2_0 for ternary models, q4_0 / q4_1 for symmetric / asymmetric int4, f16 otherwise."""
    if len(_kinds(model)) > 1:
        return MIXED
    packed = quantized_modules(model).values()
    if any(isinstance(m.format, TernaryFormat) for m in packed):
        return "tq2_0"
    int4 = [m for m in packed if isinstance(m.format, GroupedIntFormat)]
    if int4:
        return "q4_0" if all(m.symmetric for m in int4) else "q4_1"
    return "f16"


def file_name(gguf_type: str) -> str:
    return f"model.{gguf_type.upper()}.gguf"


def problems(model: nn.Module, gguf_type: Optional[str] = None) -> list[str]:
    out = gguf_arch.arch_problems(model)
    if out:
        return out
    for name, m in model.named_modules():
        if not is_packed(m, "embedding"):
            continue
        if m.group_size % gguf_blocks.QK or m.embedding_dim % gguf_blocks.QK:
            out.append(f"{name} is quantised in groups of {m.group_size} along rows of {m.embedding_dim}, which GGUF's "
                       f"{gguf_blocks.QK}-weight blocks cannot hold; quantise the embeddings with embedding_group_size 32")
        elif not m.scales.is_meta and not gguf_blocks.exact_in_f16(m.scales):
            out.append(f"{name} has {str(m.scales.dtype).removeprefix('torch.')} scales that GGUF's float16 block scales "
                       f"would round; quantise with scale_dtype float16")
    t = gguf_type or default_type(model)
    if t not in GGUF_TYPES:
        return [f"GGUF type '{t}' is not one this exporter writes; use one of {', '.join(GGUF_TYPES)}"]
    packed = quantized_modules(model)
    int4 = {n: m for n, m in packed.items() if isinstance(m.format, GroupedIntFormat)}  # int4 and int3
    ternary = {n: m for n, m in packed.items() if isinstance(m.format, TernaryFormat)}
    if t == MIXED:
        odd = [n for n, m in int4.items() if m.group_size % gguf_blocks.QK and m.group_size != m.in_features]
        if odd:
            out.append(f"{short_list(odd)} hold int4 in groups of {int4[odd[0]].group_size}, smaller than or not aligned "
                       f"with GGUF's {gguf_blocks.QK}-weight blocks, which no GGUF type stores; quantise them with "
                       f"group size 32, 64 or 128")
    if t in _INT4_TYPES:
        if not packed:
            out.append(f"{t} stores int4 weights but the model has none; quantise it first (compress-lm quantize MODEL "
                       f"--method int4 --group-size 32) or use gguf type f16 or q8_0")
        odd = [n for n, m in int4.items() if m.group_size % gguf_blocks.QK and m.group_size != m.in_features]
        if odd:
            out.append(f"{short_list(odd)} have int4 groups smaller than or not aligned with GGUF's "
                       f"{gguf_blocks.QK}-weight blocks; quantise with group size 32, 64 or 128")
        asym = [n for n, m in int4.items() if not m.symmetric]
        if t == "q4_0" and asym:
            out.append(f"{short_list(asym)} are asymmetric int4, which Q4_0 cannot hold; use gguf type q4_1")
    if t in _TERNARY_TYPES:
        if not ternary:
            out.append(f"{t} stores ternary weights but the model has none; quantise it first (compress-lm quantize "
                       f"MODEL --method ternary) or use gguf type {default_type(model)}")
        if int4:
            out.append(f"{short_list(list(int4))} hold int4 weights, which {t} cannot store; use gguf type q4_0 or q4_1")
    return out


@dataclass
class _Encoded:
    array: np.ndarray
    ggml_type: str  # a gguf.GGMLQuantizationType name
    expected: Optional[torch.Tensor] = None  # float32 values the file stands for, when not the model's own


@dataclass
class _Plan:
    """What was written, tensor by tensor."""

    types: dict[str, int] = field(default_factory=dict)  # ggml type -> tensors
    fallbacks: dict[str, list[str]] = field(default_factory=dict)  # stored type -> tensors
    expected: dict[str, torch.Tensor] = field(default_factory=dict)  # transformers name -> float32 values
    int3: list[str] = field(default_factory=list)  # int3 modules, stored in 4-bit blocks


def write(model: nn.Module, tokenizer: Any, directory: Path, final_path: str, gguf_type: Optional[str] = None,
          dtype: torch.dtype = torch.float16) -> Output:
    import gguf

    t = gguf_type or default_type(model)
    float_type = _FLOAT_TYPES[dtype]
    arch = gguf_arch.arch_for(model)
    adapter = adapter_for(model)
    widths = adapter.describe()
    path = directory / file_name(t)
    writer = gguf.GGUFWriter(str(path), arch)
    _metadata(writer, model, arch, widths, t)
    notes = add_tokenizer(writer, tokenizer, widths["vocab_size"])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], widths["num_layers"])
    packed = quantized_modules(model)
    layers = layer_linear_names(model)
    heads = _permutations(adapter, arch)
    plan = _Plan()
    written = Written()
    tensors, _ = unique_state(model)
    jobs = _jobs(tensors, packed, model)
    for hf_module, leaf, item in tqdm(jobs, desc="gguf", unit="tensor", disable=len(jobs) < 64):
        gguf_name = names.get_name(hf_module)
        if gguf_name is None:
            raise NotImplementedError(f"{hf_module} has no GGUF tensor name in the '{arch}' architecture; "
                                      f"GGUF export does not cover this model layout yet.")
        perm = heads.get(hf_module)
        if is_packed(item, "embedding"):
            enc = _encode_embedding(item)
        elif isinstance(item, nn.Module):
            enc = _encode_packed(item, perm, t, hf_module, plan, float_type)
        else:
            enc = _encode_float(item, perm, t, float_type)
        writer.add_tensor(f"{gguf_name}.{leaf}", enc.array, raw_dtype=getattr(gguf.GGMLQuantizationType, enc.ggml_type))
        plan.types[enc.ggml_type] = plan.types.get(enc.ggml_type, 0) + 1
        if enc.expected is not None:
            plan.expected[f"{hf_module}.{leaf}"] = enc.expected
        weights = item.logical_numel() if is_packed(item, "embedding") else \
            item.in_features * item.out_features if isinstance(item, nn.Module) else item.numel()
        written.add("layers" if hf_module in layers and leaf == "weight" else "other", enc.array.nbytes, weights)
    gguf_meta.add_general(writer, model, written.layer_weights + written.other_weights, arch, t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()

    for kind, names_ in plan.fallbacks.items():
        if t == MIXED:
            notes.append(f"{len(names_)} tensors could not use their own type (ternary TQ2_0 needs rows that are "
                         f"multiples of {gguf_blocks.QK_TERNARY}, int4 multiples of {gguf_blocks.QK}) and were stored as "
                         f"{kind}: {short_list(names_)}.")
            continue
        notes.append(f"{len(names_)} tensors could not use {t.upper()} (rows not a multiple of "
                     f"{gguf_blocks.QK_TERNARY if t in _TERNARY_TYPES else gguf_blocks.QK}) and were stored as {kind}: "
                     f"{short_list(names_)}.")
    if plan.int3:
        notes.append(f"{len(plan.int3)} int3 tensors are stored exactly in 4-bit blocks (Q4_0 / Q4_1: 4.5 / 5 bits per "
                     f"weight against 3.5 in a native checkpoint), as GGUF has no 3-bit type with our groups (Q3_K "
                     f"would round them again): {short_list(plan.int3)}.")
    if arch == gguf_arch.PER_LAYER_ARCH:
        notes.append("per-layer widths are written as llama.cpp's 'deci' architecture, which llama.cpp runs "
                     "(compress-lm's tests compare it there); transformers' GGUF loader does not read it.")
    load = (f"transformers.AutoModelForCausalLM.from_pretrained({final_path!r}, gguf_file={path.name!r})"
            if arch in gguf_arch.TRANSFORMERS_READS else f"llama-cli -m {final_path}/{path.name}")
    if arch in gguf_arch.TRANSFORMERS_READS:
        load += f"  or  llama-cli -m {final_path}/{path.name}"
    details = {"gguf_type": t, "gguf_file": path.name, "architecture": arch, "tensor_types": plan.types,
               "float_type": float_type}
    return Output(written, load, notes, details, plan.expected)


def _jobs(tensors: dict[str, torch.Tensor], packed: dict[str, nn.Module], model: nn.Module) -> list[tuple[str, str, Any]]:
    """(module name, leaf, tensor or packed module) in state-dict order, one entry per packed module."""
    jobs = []
    for name, tensor in tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf in ("qdata", "scales") and is_packed(model.get_submodule(module), "embedding"):  # a quantised embedding
            if leaf == "qdata":
                jobs.append((module, "weight", model.get_submodule(module)))
            continue
        if module in packed:
            if leaf == "qweight":
                jobs.append((module, "weight", packed[module]))
            elif leaf == "bias":
                jobs.append((module, "bias", tensor))
            continue
        jobs.append((module, leaf, tensor))
    return jobs


def _permutations(adapter: Any, arch: str) -> dict[str, torch.Tensor]:
    """Module name -> row order for q and k projections where llama.cpp's RoPE needs it."""
    if arch not in gguf_arch.ADJACENT_PAIR_ROPE:
        return {}
    out = {}
    for i in range(adapter.num_layers):
        part = adapter.layer(i)
        name = adapter.layer_name(i)
        out[f"{name}.{adapter.spec.q}"] = gguf_arch.permutation(part.q.out_features, part.num_heads)
        out[f"{name}.{adapter.spec.k}"] = gguf_arch.permutation(part.k.out_features, part.num_kv_heads)
    return out


_FLOAT_TYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def _encode_embedding(m: nn.Module) -> _Encoded:
    """A QuantEmbedding's codes and scales as Q8_0 (int8 rows) or Q4_0 (int4 groups): the same numbers."""
    codes = m.codes().cpu()
    d = gguf_blocks.block_scales(m.scales.detach().cpu().t(), m.group_size, m.embedding_dim)
    if m.bits == 8:
        return _Encoded(gguf_blocks.q8_0(codes, d), "Q8_0")
    return _Encoded(gguf_blocks.q4_0((codes.to(torch.int16) + 8).to(torch.uint8), d), "Q4_0")


def _encode_float(tensor: torch.Tensor, perm: Optional[torch.Tensor], t: str, float_type: str = "F16") -> _Encoded:
    import gguf

    w = tensor.detach().to(torch.float32)
    if perm is not None:
        w = w[perm]
    if w.dim() == 1:
        return _Encoded(w.numpy(), "F32")  # exact for every float dtype
    if t == "q8_0" and w.shape[-1] % gguf_blocks.QK == 0:
        arr = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
        back = torch.from_numpy(gguf.quants.dequantize(arr, gguf.GGMLQuantizationType.Q8_0).copy())
        return _Encoded(arr, "Q8_0", _unpermute(back, perm))
    if float_type == "F32":
        return _Encoded(w.numpy(), "F32")
    if float_type == "BF16":
        arr = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.BF16)
        back = torch.from_numpy(gguf.quants.dequantize(arr, gguf.GGMLQuantizationType.BF16).copy())
        return _Encoded(arr, "BF16", _unpermute(back, perm))
    half = w.to(torch.float16)
    return _Encoded(half.numpy(), "F16", _unpermute(half.to(torch.float32), perm))


def _encode_packed(m: nn.Module, perm: Optional[torch.Tensor], t: str, name: str, plan: _Plan,
                   float_type: str = "F16") -> _Encoded:
    import gguf

    w = m.dequantize_weight(torch.float32).cpu()
    wp = w if perm is None else w[perm]
    K = m.in_features
    whole_blocks = K % gguf_blocks.QK == 0
    if t == MIXED:  # the module's own type
        t = own_type(m)
    if isinstance(m.format, GroupedIntFormat) and t in _INT4_TYPES and whole_blocks:
        codes = m.format.unpack(m.qweight.cpu(), K)
        if m.format.bits == 3:  # int3 fits 4-bit blocks exactly: symmetric codes move from offset 4 to Q4_0's 8
            plan.int3.append(name)
            codes = codes + 4 if m.zeros is None else codes
        scales = m.scales.detach().cpu()
        zeros = None if m.zeros is None else m.zeros.detach().cpu()
        if perm is not None:
            codes, scales = codes[perm], scales[:, perm]
            zeros = None if zeros is None else zeros[:, perm]
        d = gguf_blocks.block_scales(scales, m.group_size, K)
        if t == "q4_0":
            return _Encoded(gguf_blocks.q4_0(codes, d), "Q4_0", _q4_expected(codes, d, None, perm))
        z = np.full_like(d, 8.0) if zeros is None else gguf_blocks.block_scales(zeros, m.group_size, K)
        mins = -z * d
        return _Encoded(gguf_blocks.q4_1(codes, d, mins), "Q4_1", _q4_expected(codes, d, mins, perm))
    if isinstance(m.format, TernaryFormat) and t in _TERNARY_TYPES and K % gguf_blocks.QK_TERNARY == 0:
        qtype = getattr(gguf.GGMLQuantizationType, t.upper())
        return _Encoded(gguf.quants.quantize(wp.numpy(), qtype), t.upper(), _f16_scaled(w, m))
    if isinstance(m.format, TernaryFormat) and t in (*_TERNARY_TYPES, *_INT4_TYPES) and whole_blocks:
        codes = unpack_ternary(m.qweight.cpu()) + 7  # w + 8: Q4_0's offset, d = gamma
        gamma = m.scales.detach().cpu().to(torch.float32).reshape(-1).expand(m.out_features)
        if perm is not None:
            codes, gamma = codes[perm], gamma[perm]
        d = gamma[:, None].expand(-1, K // gguf_blocks.QK).numpy()
        if t in _TERNARY_TYPES:
            plan.fallbacks.setdefault("Q4_0 (exact)", []).append(name)
        return _Encoded(gguf_blocks.q4_0(codes, d), "Q4_0", _q4_expected(codes, d, None, perm))
    enc = _encode_float(w, perm, t, float_type)
    if t not in ("f16", "q8_0"):  # a packed module stored as floats (dequantised): exact for int4 with F32
        exact = " (exact)" if isinstance(m.format, TernaryFormat) and gguf_blocks.exact_in_f16(m.scales) else ""
        plan.fallbacks.setdefault(f"{enc.ggml_type}{exact}", []).append(name)
    return enc


def _unpermute(w: torch.Tensor, perm: Optional[torch.Tensor]) -> torch.Tensor:
    if perm is None:
        return w
    out = torch.empty_like(w)
    out[perm] = w
    return out


def _q4_expected(codes: torch.Tensor, d: np.ndarray, mins: Optional[np.ndarray], perm: Optional[torch.Tensor]) -> torch.Tensor:
    """The weight Q4_0 (``(q - 8) * d``) or Q4_1 (``q * d + m``) blocks stand for, with float16 d and m."""
    d16 = torch.from_numpy(d.astype(np.float16).astype(np.float32)).repeat_interleave(gguf_blocks.QK, dim=1)
    q = codes.to(torch.float32)
    if mins is None:
        w = (q - 8.0) * d16
    else:
        w = q * d16 + torch.from_numpy(mins.astype(np.float16).astype(np.float32)).repeat_interleave(gguf_blocks.QK, dim=1)
    return _unpermute(w, perm)


def _f16_scaled(w: torch.Tensor, m: nn.Module) -> Optional[torch.Tensor]:
    """TQ blocks hold float16 scales: the weight as stored when the model's scales are not float16 values."""
    if gguf_blocks.exact_in_f16(m.scales):
        return None
    gamma16 = m.scales.detach().cpu().to(torch.float16).to(torch.float32).reshape(-1, 1)
    return torch.sign(w) * gamma16


def _metadata(writer: Any, model: nn.Module, arch: str, widths: dict[str, Any], t: str) -> None:
    import gguf

    config = model.config.get_text_config()
    per_layer = arch == gguf_arch.PER_LAYER_ARCH
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(widths["hidden_size"]))
    writer.add_block_count(int(widths["num_layers"]))
    pick = (lambda v: [int(x) for x in v]) if per_layer else (lambda v: int(v[0]))
    writer.add_feed_forward_length(pick(widths["mlp_width"]))
    writer.add_head_count(pick(widths["num_heads"]))
    writer.add_head_count_kv(pick(widths["num_kv_heads"]))
    writer.add_rope_freq_base(gguf_arch.rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_key_length(int(widths["head_dim"]))
    writer.add_value_length(int(widths["head_dim"]))
    writer.add_rope_dimension_count(int(widths["head_dim"]))
    writer.add_vocab_size(int(widths["vocab_size"]))
    if t == MIXED:  # general.file_type names one type: the most common packed one (llama.cpp reads it as a label)
        kinds = [_FILE_TYPE[own_type(m)] for m in quantized_modules(model).values()]
        file_type = max(set(kinds), key=kinds.count) if kinds else "MOSTLY_F16"
    else:
        file_type = _FILE_TYPE[t]
    writer.add_file_type(int(getattr(gguf.LlamaFileType, file_type)))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
