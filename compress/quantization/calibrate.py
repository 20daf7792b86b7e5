"""Layer-by-layer GPTQ: capture each decoder layer's inputs, quantise, feed the result on.

Peak memory is the model plus one layer's working set (its inputs for all
calibration batches and the Hessians of the stage being quantised).  Each
stage's Hessian pass stops inside the layer once the stage's modules have seen
their inputs.

Capture without exceptions: every layer's ``forward`` is replaced for one pass
of the backbone by a recorder that stores the call and hands its input
straight back, so the pass costs little more than the embeddings and no layer
runs.  The keyword arguments the backbone builds per layer (masks, rotary
embeddings; they differ per layer type in Gemma3) are kept per layer; the
hidden states are then computed for real, one quantised layer after another.

GPTAQ targets also need the original model's inputs to each module: a second
stream of hidden states runs through a copy of each layer as it was before
quantisation, batch by batch beside the quantised one.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.arch import Adapter
from compress.quantization.gptq import accumulate_drift, accumulate_hessian, gptq_quantize
from compress.quantization.memory import release_freed_memory
from compress.quantization.plan import Target, set_module
from compress.quantization.quantizers import Quantised

Convert = Callable[[Target, Optional[Quantised]], nn.Module]


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


def _stages(adapter: Adapter, index: int, targets: list[Target], true_sequential: bool) -> list[list[Target]]:
    """Targets of one layer in the order their inputs become final: q/k/v, o, MLP inputs, MLP output."""
    if not true_sequential:
        return [targets]
    parts = adapter.layer(index)
    order = [[parts.q, parts.k, parts.v], [parts.o], list(parts.mlp_in), [parts.mlp_out]]
    stage_of = {id(m): s for s, group in enumerate(order) for m in group}
    stages: list[list[Target]] = [[] for _ in range(len(order) + 1)]
    for t in targets:
        stages[stage_of.get(id(t.module), len(order))].append(t)
    return [s for s in stages if s]


class _StageInputsSeen(Exception):
    """Raised inside a layer once every module of the stage has seen its input: the rest of the layer is not needed."""


@torch.no_grad()
def _input_statistics(
    layer: nn.Module, stage: list[Target], hidden: list[torch.Tensor], calls: list[LayerCall], stop_early: bool = True,
    original: nn.Module | None = None, fp_hidden: list[torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Input Hessians of the stage's GPTQ targets over every calibration batch, and GPTAQ's drift dXX^T.

    With ``stop_early`` each pass ends as soon as the last of these modules has
    been called (q/k/v need only the input norm, o_proj the attention): about
    half the compute of running the whole layer once per stage.  With
    ``original`` (the layer before quantisation) and ``fp_hidden`` (the
    original model's hidden states), each batch first runs ``original`` to
    record what its modules see, for the drift of the targets that ask for
    GPTAQ; without them the drift dict is empty.
    """
    wanted = [t for t in stage if t.config.gptq]
    drifting = [t for t in wanted if t.config.gptaq] if original is not None else []

    def zeros(t: Target) -> list:
        return [torch.zeros(t.module.in_features, t.module.in_features, device=t.module.weight.device), 0]

    stats = {t.name: zeros(t) for t in wanted}
    drift = {t.name: zeros(t) for t in drifting}
    fp_inputs: dict[str, torch.Tensor] = {}
    seen: set[str] = set()

    def record(name: str) -> Callable:
        def pre_hook(module: nn.Module, args: tuple) -> None:
            fp_inputs[name] = args[0].detach()
            if stop_early and len(fp_inputs) == len(drift):
                raise _StageInputsSeen

        return pre_hook

    def hook(name: str) -> Callable:
        def pre_hook(module: nn.Module, args: tuple) -> None:
            stats[name][1] = accumulate_hessian(stats[name][0], stats[name][1], args[0])
            if name in drift:
                drift[name][1] = accumulate_drift(drift[name][0], drift[name][1], fp_inputs[name], args[0])
            seen.add(name)
            if stop_early and len(seen) == len(stats):
                raise _StageInputsSeen

        return pre_hook

    path = {id(m): n for n, m in layer.named_modules()}
    handles = [original.get_submodule(path[id(t.module)]).register_forward_pre_hook(record(t.name)) for t in drifting]
    handles += [t.module.register_forward_pre_hook(hook(t.name)) for t in wanted]
    try:
        if wanted:
            for h, fp_h, call in zip(hidden, fp_hidden if drifting else hidden, calls):
                seen.clear()
                fp_inputs.clear()
                for module, states in ((original, fp_h), (layer, h)) if drifting else ((layer, h),):
                    try:
                        call.run(module, states)
                    except _StageInputsSeen:
                        pass
    finally:
        for handle in handles:
            handle.remove()
    return {name: H for name, (H, _) in stats.items()}, {name: D for name, (D, _) in drift.items()}


def quantize_sequential(
    adapter: Adapter,
    layer_targets: list[list[Target]],
    data: torch.Tensor,
    convert: Convert,
    *,
    batch_size: int,
    true_sequential: bool,
    progress: bool = True,
) -> None:
    """Quantise ``layer_targets[i]`` (the targets inside layer i) layer by layer, GPTQ where asked.

    ``convert(target, quantised)`` replaces a module; ``quantised`` is None
    when the target uses round-to-nearest.
    """
    device = next(adapter.model.parameters()).device
    batches = list(data.to(device).split(batch_size))
    hidden, calls = capture_layer_calls(adapter, batches)
    gptaq = any(t.config.gptq and t.config.gptaq for targets in layer_targets for t in targets)
    fp_hidden = [h.clone() for h in hidden] if gptaq else []  # the original model's hidden states (GPTAQ)
    bar = tqdm(range(adapter.num_layers), desc="GPTAQ" if gptaq else "GPTQ", unit="layer", disable=not progress)
    for i in bar:
        layer, packed = adapter.layers[i], []
        original = copy.deepcopy(layer) if gptaq else None
        try:
            for stage in _stages(adapter, i, layer_targets[i], true_sequential):
                H, drift = _input_statistics(layer, stage, hidden, calls[i], original=original, fp_hidden=fp_hidden)
                for t in stage:
                    dtype = t.module.weight.dtype
                    module = convert(t, gptq_quantize(t.module.weight, H.pop(t.name), t.config, overwrite_hessian=True,
                                                      drift=drift.pop(t.name, None))
                                     if t.name in H else None)
                    # Later passes over this layer run a dense copy: the reference kernel would unpack
                    # the weights on every call.  Same weights; the packed module goes back below.
                    packed.append((t.name, module))
                    set_module(adapter.model, t.name, _dense_copy(module, dtype))
                release_freed_memory()
            if i + 1 < adapter.num_layers:
                with torch.no_grad():
                    for h, call in zip(hidden, calls[i]):
                        h.copy_(call.run(layer, h))  # in place: one copy of the calibration activations, not two
                    for h, call in zip(fp_hidden, calls[i]):
                        h.copy_(call.run(original, h))
        finally:
            del original
            for name, module in packed:
                set_module(adapter.model, name, module)


def _dense_copy(module: nn.Module, dtype: torch.dtype) -> nn.Linear:
    """An ``nn.Linear`` holding a quantised module's dequantised weight (for calibration passes only)."""
    bias = getattr(module, "bias", None)
    dense = nn.Linear(module.in_features, module.out_features, bias=bias is not None, device="meta")
    dense.weight = nn.Parameter(module.dequantize_weight(dtype), requires_grad=False)
    if bias is not None:
        dense.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return dense

