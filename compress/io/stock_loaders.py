"""What a checkpoint with packed weights tells stock transformers (and lm-eval's ``--model hf``).

Stock Llama / Qwen layers have no place for packed int4 or ternary weights:
given our ``config.json`` as it is, ``AutoModelForCausalLM.from_pretrained``
only warns about missing and unexpected keys and runs with freshly
initialised layers.  So such a checkpoint names a model type transformers
does not have (``compress-lm``, the real one kept under ``REAL_TYPE_KEY``)
and points ``auto_map`` at a small module in the checkpoint: with
``trust_remote_code=True`` it loads the model through compress-lm; without
compress-lm installed it refuses in one sentence; and without
``trust_remote_code`` transformers itself refuses (its custom-code message).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_TYPE = "compress-lm"
REAL_TYPE_KEY = "compress_model_type"
MODULE = "compress_lm_checkpoint"

_MODULE_TEXT = '''"""A compress-lm checkpoint: packed weights that stock transformers layers cannot hold.

AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) loads it through compress-lm
(its compress.load); without compress-lm installed it refuses rather than build random layers.
"""
from transformers import PretrainedConfig, PreTrainedModel


class CompressLMConfig(PretrainedConfig):
    model_type = "compress-lm"


class CompressLMCheckpoint(PreTrainedModel):
    config_class = CompressLMConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            from compress.io import load
        except ImportError as err:
            raise ImportError(
                f"{pretrained_model_name_or_path} is a compress-lm checkpoint with packed weights, which "
                f"transformers' own layers cannot hold; install compress-lm and load it with compress.load, or "
                f"export it for other tools (compress-lm export DIR --format hf, gptq, compressed-tensors, "
                f"bitnet or gguf)."
            ) from err
        model = load(pretrained_model_name_or_path).model
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        return model if dtype in (None, "auto") else model.to(dtype)
'''


def refuse_stock_layers(directory: Path) -> None:
    """Rewrite ``directory/config.json`` so stock transformers cannot build plain layers from it."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config[REAL_TYPE_KEY] = config["model_type"]
    config["model_type"] = MODEL_TYPE
    config["auto_map"] = {"AutoConfig": f"{MODULE}.CompressLMConfig",
                          "AutoModel": f"{MODULE}.CompressLMCheckpoint",
                          "AutoModelForCausalLM": f"{MODULE}.CompressLMCheckpoint"}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (directory / f"{MODULE}.py").write_text(_MODULE_TEXT)


def read_config(directory: Path) -> Any:
    """The checkpoint's transformers config, with the real model type put back."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    data = json.loads((directory / "config.json").read_text())
    if not is_ours(data):
        return AutoConfig.from_pretrained(directory, trust_remote_code=False)
    data["model_type"] = data.pop(REAL_TYPE_KEY)
    data.pop("auto_map", None)  # the shipped module is for stock loaders; compress-lm never runs it
    return CONFIG_MAPPING[data["model_type"]].from_dict(data)


def is_ours(data: Any) -> bool:
    """Whether a parsed config.json is one ``refuse_stock_layers`` wrote, over a model type transformers knows."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return (isinstance(data, dict) and data.get("model_type") == MODEL_TYPE
            and isinstance(data.get(REAL_TYPE_KEY), str) and data[REAL_TYPE_KEY] in CONFIG_MAPPING)
