"""``hf``: plain float weights that ``AutoModelForCausalLM.from_pretrained`` loads.

Packed modules, quantised embedding tables included, are dequantised (the
file is as large as an unquantised model of the same widths).  A model whose layers were pruned to different
widths gets the shipped modeling file of ``compress.io.remote_code``, so it
loads with ``trust_remote_code=True`` and nothing of compress-lm installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.io import remote_code
from compress.io.exports.base import Output
from compress.io.exports.common import (
    float_state,
    is_uniform,
    quantized_embeddings,
    quantized_modules,
    write_model_files,
)


def problems(model: nn.Module) -> list[str]:
    return []  # any transformers model with float or packed weights fits


def load_hint(model: nn.Module, path: str) -> str:
    auto = remote_code.auto_map_key(model)
    remote = "" if is_uniform(model) else ", trust_remote_code=True"
    return f"transformers.{auto}.from_pretrained({path!r}{remote})"


def write(model: nn.Module, tokenizer: Any, directory: Path, final_path: str, dtype: torch.dtype = torch.bfloat16) -> Output:
    written = write_model_files(model, tokenizer, directory, float_state(model, dtype), dtype=dtype)
    notes = []
    packed = quantized_modules(model)
    # the dequantised weights as the file holds them (rounded to the stored dtype), for the check
    tables = quantized_embeddings(model)
    expected = {f"{n}.weight": m.dequantize_weight(dtype).to(torch.float32).cpu()
                for n, m in {**packed, **tables}.items()} if dtype != torch.float32 else {}
    if packed or tables:
        notes.append(f"{len(packed) + len(tables)} packed modules were dequantised to {str(dtype).removeprefix('torch.')}; "
                     f"the values are the quantised ones, the size is that of a float model.")
    a8 = [n for n, m in packed.items() if getattr(m, "activations", "a16") == "a8"]
    if a8:
        notes.append(f"{len(a8)} modules quantised activations to 8 bits (W1.58A8); float weights run with 16-bit "
                     f"activations, so outputs differ slightly (the bitnet format keeps int8 activations).")
    if not is_uniform(model):
        notes.append("layers have different widths: the directory ships modeling_compress.py (needs trust_remote_code=True).")
    return Output(written, load_hint(model, final_path), notes, {"dtype": str(dtype).removeprefix("torch.")}, expected)
