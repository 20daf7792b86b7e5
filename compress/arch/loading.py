"""What a loader returns and which transformers class builds a config: shared by models and io."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from compress.arch.spec import SPECS


class LoadedModel(NamedTuple):
    model: torch.nn.Module
    tokenizer: Any


def model_class(config: Any) -> Any:
    """The transformers class for ``config``: its named architecture, else the Auto class for its kind."""
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM

    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith(("ForCausalLM", "ForMaskedLM")) or arch.endswith("Model"):
            cls = getattr(transformers, arch, None)
            if cls is not None:
                return cls
    encoders = {t for s in SPECS if not s.causal for t in s.model_types}
    return AutoModel if config.model_type in encoders else AutoModelForCausalLM
