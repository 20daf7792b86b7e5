"""How a transformers model maps onto a GGUF architecture (llama.cpp's vocabulary, not compress-lm's).

The names below are GGUF architecture names and transformers ``model_type``
values: facts of the two file formats.  Which modules are projections,
norms and embeddings still comes from the model's adapter.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from compress.io.exports.common import adapter_or_none, is_uniform

# transformers model_type -> GGUF architecture with the same computation.
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# llama.cpp's Llama with per-layer head counts and feed-forward widths (written
# for Llama-3.1-Nemotron-51B); it takes pruned Llama-layout models.
PER_LAYER_ARCH = "deci"
PER_LAYER_MODEL_TYPES = ("llama", "mistral")
# Architectures whose RoPE in llama.cpp rotates adjacent pairs: the q/k rows of
# a transformers checkpoint (which rotates halves) are permuted on the way in,
# as llama.cpp's convert_hf_to_gguf.py does.
ADJACENT_PAIR_ROPE = ("llama", "deci")
# Architectures transformers' GGUF loader rebuilds exactly (its qwen3 reader
# drops head_dim, so qwen3 and deci files are checked with gguf's own reader).
TRANSFORMERS_READS = ("llama", "qwen2")


def model_type(model: nn.Module) -> str:
    return model.config.get_text_config().model_type


def rope_theta(config: Any) -> Optional[float]:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def rope_type(config: Any) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return (params.get("rope_type") or params.get("type") or "default") if isinstance(params, dict) else "default"


def arch_for(model: nn.Module) -> Optional[str]:
    """The GGUF architecture this model is written as, or None if there is none."""
    mt = model_type(model)
    if not is_uniform(model):
        return PER_LAYER_ARCH if mt in PER_LAYER_MODEL_TYPES else None
    return GGUF_ARCH.get(mt)


def arch_problems(model: nn.Module) -> list[str]:
    adapter = adapter_or_none(model)
    if adapter is None or not adapter.spec.causal:
        return ["GGUF export writes causal language models; this model is not one (export it as hf)"]
    mt = model_type(model)
    config = model.config.get_text_config()
    out: list[str] = []
    if arch_for(model) is None:
        if mt in GGUF_ARCH:
            out.append(f"its layers have different widths and only llama.cpp's '{PER_LAYER_ARCH}' architecture holds "
                       f"per-layer widths, for model types {', '.join(PER_LAYER_MODEL_TYPES)}, not '{mt}'; prune with "
                       f"method='uniform' or export as hf")
        else:
            out.append(f"GGUF export supports model types {', '.join(GGUF_ARCH)}, not '{mt}'; export it as hf")
        return out
    if rope_type(config) != "default":
        out.append(f"its RoPE scaling '{rope_type(config)}' is not written to GGUF by this exporter; export it as hf")
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < config.max_position_embeddings:
        out.append(f"it uses sliding-window attention ({window} tokens), which the '{arch_for(model)}' GGUF "
                   f"architecture does not have; export it as hf")
    return out


def permutation(rows: int, heads: int) -> torch.Tensor:
    """Row order llama.cpp expects for a q or k projection of ``heads`` heads (convert_hf_to_gguf's permute)."""
    half = rows // heads // 2
    return torch.arange(rows).reshape(heads, 2, half).transpose(1, 2).reshape(-1)
