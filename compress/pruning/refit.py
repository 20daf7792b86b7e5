"""Refit what pruning left: each layer's output projections (``o``, ``mlp_out``) solved to the original's outputs.

Pruning removes inputs of ``o`` (whole heads) and of ``mlp_out`` (MLP
channels).  Much of what the removed inputs carried is a linear function of
the kept ones, so on calibration text each layer's two output projections are
refitted by ridge regression (the structured form of the OBS update that
SlimGPT and ZipLM use):

    min_W'  || a_p W'^T - a_o W^T ||^2  +  lam || W' - W_kept ||^2

where ``a_o`` is the projection's input in the original layer fed the
original model's hidden states, ``a_p`` its input in the pruned layer fed the
pruned model's own (already refitted) hidden states, and ``lam`` is ``damp``
times the mean of diag(a_p^T a_p).  Fed its own states, each layer also takes
up the drift left by the layers before it, as GPTAQ does for quantisation, so
every layer is refitted, pruned or not.  The ridge term pulls towards plain
pruning (``W_kept``: the surviving columns) rather than towards zero: a larger
``damp`` is a gentler refit, and the calibration error can only go down.

Math in ``refit_weight``; the layer walk in ``refit_outputs``: per layer, one
pass of the original layer records both projections' inputs and its output;
the pruned layer runs up to ``o`` (refit ``o``), up to ``mlp_out`` (refit it),
then whole, to feed the next layer.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.arch import Adapter
from compress.layer_calls import LayerCall, capture_layer_calls


def refit_weight(weight: torch.Tensor, kept: torch.Tensor, H: torch.Tensor, G: torch.Tensor, damp: float) -> torch.Tensor:
    """The ridge solution ``W'`` [out, k]: ``W'^T = (H + lam I)^-1 (G W^T + lam W_kept^T)``.

    ``weight`` [out, d]: the original projection; ``kept`` [out, k]: the
    pruned one before the refit (where the ridge term pulls); ``H`` =
    a_p^T a_p [k, k]; ``G`` = a_p^T a_o [k, d]; ``lam = damp * mean(diag H)``.
    """
    H, G = H.double(), G.double()
    lam = damp * float(H.diagonal().mean().clamp_min(1e-12))
    A = H + lam * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    B = G @ weight.double().T + lam * kept.double().T
    L, info = torch.linalg.cholesky_ex(A)
    solved = torch.cholesky_solve(B, L) if int(info) == 0 else torch.linalg.lstsq(A, B).solution
    return solved.T.to(kept.dtype).contiguous()


class _Seen(Exception):
    """Stops a layer's pass once the projection being refitted has seen its input."""


@dataclass
class Snapshot:
    """The decoder layers as they were before pruning, the token ids it was taken on, and each layer's
    first input and calls per batch: the refit's target."""

    layers: list[nn.Module]
    batches: list[torch.Tensor]
    hidden: list[torch.Tensor]
    calls: list[list[LayerCall]]

    @classmethod
    @torch.no_grad()
    def take(cls, adapter: Adapter, batches: list[torch.Tensor]) -> "Snapshot":
        hidden, calls = capture_layer_calls(adapter, batches)
        return cls([copy.deepcopy(layer).eval() for layer in adapter.layers], batches, hidden, calls)


def _path(layer: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in layer.named_modules() if m is module)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(-1, x.shape[-1]).float()


def _input_of(layer: nn.Module, module: nn.Module, call: LayerCall, hidden: torch.Tensor) -> torch.Tensor:
    """What ``module`` (inside ``layer``) receives when ``layer`` runs on ``hidden``; the rest of the layer is skipped."""
    seen: list[torch.Tensor] = []

    def pre_hook(_m: nn.Module, args: tuple) -> None:
        seen.append(args[0])
        raise _Seen

    handle = module.register_forward_pre_hook(pre_hook)
    try:
        call.run(layer, hidden)
    except _Seen:
        pass
    finally:
        handle.remove()
    return _flat(seen[0])


def _run_recording(layer: nn.Module, modules: list[nn.Module], call: LayerCall, hidden: torch.Tensor
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``layer``'s output on ``hidden`` and the input each of ``modules`` received on the way."""
    seen: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda _m, args, k=k: seen.__setitem__(k, _flat(args[0])))
               for k, m in enumerate(modules)]
    try:
        out = call.run(layer, hidden)
    finally:
        for h in handles:
            h.remove()
    return out, [seen[k] for k in range(len(modules))]


@torch.no_grad()
def refit_outputs(
    adapter: Adapter,
    snapshot: Snapshot,
    sources: list[int],
    *,
    damp: float,
    progress: bool = False,
) -> int:
    """Refit ``o`` and ``mlp_out`` of every current layer against ``snapshot``, in place; returns how many.

    ``sources[i]``: the snapshot index of current layer ``i``; layers pruning
    dropped have none, and the original stream still runs through them.
    The pruned model reads the token ids ``snapshot`` was taken on.
    """
    hidden_p, calls_p = capture_layer_calls(adapter, snapshot.batches)
    hidden_o = [h.clone() for h in snapshot.hidden]
    done, next_source = 0, 0
    layers = list(adapter.layers)
    for i in tqdm(range(len(layers)), desc="refit after pruning", unit="layer", disable=not progress):
        src = sources[i]
        for j in range(next_source, src):  # dropped layers: the original stream goes through them
            _advance(snapshot.layers[j], snapshot.calls[j], hidden_o)
        next_source = src + 1
        layer, original, parts = layers[i], snapshot.layers[src], adapter.layer(i)
        pruned = [parts.o, parts.mlp_out]
        targets = [original.get_submodule(_path(layer, m)) for m in pruned]
        recorded = []  # per batch: the original's inputs of o and mlp_out
        for b, (h, call) in enumerate(zip(hidden_o, snapshot.calls[src])):
            hidden_o[b], inputs = _run_recording(original, targets, call, h)
            recorded.append(inputs)
        for k, (module, target) in enumerate(zip(pruned, targets)):
            H = torch.zeros(module.in_features, module.in_features, dtype=torch.float64, device=module.weight.device)
            G = torch.zeros(module.in_features, target.in_features, dtype=torch.float64, device=module.weight.device)
            for h, call, inputs in zip(hidden_p, calls_p[i], recorded):
                a_p = _input_of(layer, module, call, h)
                H += (a_p.T @ a_p).double()
                G += (a_p.T @ inputs[k]).double()
            module.weight.data = refit_weight(target.weight.data, module.weight.data, H, G, damp)
            done += 1
        del recorded
        _advance(layer, calls_p[i], hidden_p)
    return done


def _advance(layer: nn.Module, calls: list[LayerCall], hidden: list[torch.Tensor]) -> None:
    for b, (h, call) in enumerate(zip(hidden, calls)):
        hidden[b] = call.run(layer, h)
