"""Tiny inputs and recipes for the pipeline tests: a 2-layer Llama, a sonnet, and a four-stage recipe."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file

from tests.tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer


class Inputs(NamedTuple):
    model: Path
    text: Path


def write_inputs(directory: Path) -> Inputs:
    model_dir, text = directory / "tiny-llama", directory / "sonnet.txt"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    text.write_text((SAMPLE_TEXT + "\n") * 20)
    return Inputs(model_dir, text)


def tiny_recipe(inputs: Inputs, **changes: Any) -> dict[str, Any]:
    """prune -> recover -> int4 -> export native, on the tiny model (a few seconds)."""
    recipe = {
        "name": "tiny",
        "model": str(inputs.model),
        "data": [str(inputs.text)],
        "text": {"seq_len": 32},
        "eval": {"sequences": 4, "batch_size": 4},
        "stages": [
            {"prune": {"sparsity": 0.3, "round_to": 16, "calib_samples": 8, "calib_seq_len": 16, "step": 0.1}},
            {"recover": {"steps": 8, "batch_size": 2, "lr": 1e-3, "eval_every": 0, "checkpoint_every": 2}},
            {"quantize": {"method": "int4", "group_size": 16}},
            {"export": ["native"]},
        ],
    }
    recipe.update(changes)
    return recipe


def tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(Path(checkpoint).glob("model*.safetensors")) for k, v in load_file(f).items()}


def same_tensors(a: Path, b: Path) -> bool:
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
