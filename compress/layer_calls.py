"""Run a decoder stack one layer at a time: capture each layer's call, then replay it on any hidden states.

Layer-wise calibration (GPTQ in ``quantization``, the least-squares refit in
``pruning``) needs each layer's input for every calibration batch, and the
keyword arguments the backbone builds per layer (masks, rotary embeddings;
they differ per layer type in Gemma3).  ``capture_layer_calls`` records them
in one pass of the backbone in which no layer runs: every layer's
``forward`` is replaced by a recorder that hands its input straight back.
It sits here, below both packages, so neither imports the other.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from compress.arch import Adapter


@dataclass
class LayerCall:
    """One call of a layer minus its hidden states: rebuild it with ``call(layer, hidden)``."""

    args: tuple
    kwargs: dict[str, Any]
    hidden_in_kwargs: bool

    def run(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_in_kwargs:
            out = layer(*self.args, hidden_states=hidden, **self.kwargs)
        else:
            out = layer(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def _split_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, LayerCall]:
    if args:
        return args[0], LayerCall(args[1:], dict(kwargs), False)
    kwargs = dict(kwargs)
    hidden = kwargs.pop("hidden_states")
    return hidden, LayerCall((), kwargs, True)


@torch.no_grad()
def capture_layer_calls(adapter: Adapter, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[list[LayerCall]]]:
    """First layer's input hidden states per batch, and every layer's calls per batch."""
    layers = list(adapter.layers)
    calls: list[list[LayerCall]] = [[] for _ in layers]
    first_hidden: list[torch.Tensor] = []

    def recorder(i: int) -> Callable:
        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            hidden, call = _split_call(args, kwargs)
            calls[i].append(call)
            if i == 0:
                first_hidden.append(hidden)
            return hidden  # every supported family's layer returns the hidden states alone

        return forward

    backbone = getattr(adapter.model, "base_model", adapter.model)
    extra = {"use_cache": False} if "use_cache" in inspect.signature(backbone.forward).parameters else {}
    try:
        for i, layer in enumerate(layers):
            layer.forward = recorder(i)  # instance attribute shadows the class method for this pass
        for ids in batches:
            backbone(input_ids=ids, **extra)
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
    return first_hidden, calls

