"""How far a weight change moves the output: three probes with one interface.

A *change* is ``(linear, new_weight)``.  Each probe runs the unmodified model
once on the calibration batches when built, keeping what it needs, then
answers ``error(layer, changes)`` for any number of changes:

- ``ModuleProbe``: ``|X dW^T|_F / |X W^T|_F`` of each changed module over all
  tokens, from the Gram matrix ``X^T X`` of its input (no forward per entry);
- ``LayerProbe``: re-runs only decoder layer ``layer`` with the change, on the
  inputs it saw, and returns the mean over tokens of ``|dh| / |h|`` of its
  output hidden state;
- ``KLProbe``: re-runs the whole model with the change and returns the mean
  KL(original || changed) of the output distributions, in nats per token.

Weights are swapped in place and always restored (``swapped``), so nothing is
copied but the changed weights.  ``KLProbe`` and ``swapped`` live in
``compress.output_kl``, below pruning, which measures kv groups with them.
"""
from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any, Sequence

import torch
from torch import nn

from compress.arch import Adapter
from compress.output_kl import Change, KLProbe, forward_kwargs, swapped

__all__ = ["Change", "KLProbe", "LayerProbe", "ModuleProbe", "PROBES", "forward_kwargs", "swapped"]

def _backbone(model: nn.Module) -> nn.Module:
    """The model without its LM head: hooks on the layers don't need vocabulary-sized logits."""
    return getattr(model, "base_model", model)


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class ModuleProbe:
    """Relative output error of the changed modules, from a factor of the Gram matrix of their inputs.

    ``|X dW^T|_F^2 = |R dW^T|_F^2`` for any ``R`` with ``R^T R = X^T X``: the
    inputs ``X`` themselves when there are fewer tokens than input features,
    else ``Lambda^1/2 V^T`` from the Gram matrix's eigendecomposition.  Either
    way ``R`` has ``min(tokens, in_features)`` rows, the cheapest product.
    """

    def __init__(self, model: nn.Module, adapter: Adapter, batches: Sequence[torch.Tensor]):
        tokens = sum(b.numel() for b in batches)
        rows: dict[int, list[torch.Tensor]] = {}  # id(linear) -> its inputs, when they are the smaller factor
        grams: dict[int, torch.Tensor] = {}  # id(linear) -> X^T X, otherwise
        self.owner: dict[int, int] = {}  # modules fed the very same tensor (q/k/v, gate/up) share one factor
        self.den: dict[int, float] = {}
        last: dict[str, Any] = {"x": None, "owner": None}
        linears = [lin for i in range(adapter.num_layers) for lin in _projections(adapter, i)]

        def hook(lin: nn.Linear):
            keep_rows = tokens <= lin.in_features

            def pre(_module: nn.Module, args: tuple) -> None:
                x = args[0]
                if x is last["x"]:
                    self.owner[id(lin)] = last["owner"]
                    return
                flat = x.detach().reshape(-1, x.shape[-1]).float()
                if keep_rows:
                    rows.setdefault(id(lin), []).append(flat)
                else:
                    gram = flat.t() @ flat
                    grams[id(lin)] = grams[id(lin)] + gram if id(lin) in grams else gram
                last["x"], last["owner"] = x, id(lin)

            return pre

        with ExitStack() as stack, torch.no_grad():
            for lin in linears:
                stack.callback(lin.register_forward_pre_hook(hook(lin)).remove)
            for batch in batches:
                _backbone(model)(input_ids=batch, **forward_kwargs(adapter))
                last["x"] = None  # never alias across batches
        self.factors = {key: torch.cat(x) for key, x in rows.items()}
        self.factors.update({key: _gram_factor(g) for key, g in grams.items()})

    def factor(self, lin: nn.Linear) -> torch.Tensor:
        return self.factors[self.owner.get(id(lin), id(lin))]

    def error(self, layer: int, changes: Sequence[Change]) -> float:
        num = den = 0.0
        for lin, weight in changes:
            r = self.factor(lin)
            w = lin.weight.detach().float()
            num += float((r @ (weight.float() - w).t()).square().sum())
            if id(lin) not in self.den:  # weights are always restored, so this stays valid
                self.den[id(lin)] = float((r @ w.t()).square().sum())
            den += self.den[id(lin)]
        return math.sqrt(num / den) if den > 0 else 0.0


def _gram_factor(gram: torch.Tensor) -> torch.Tensor:
    """``R = Lambda^1/2 V^T``, so that ``R^T R`` is the (symmetric, positive semi-definite) ``gram``."""
    evals, evecs = torch.linalg.eigh(gram.double())
    return (evals.clamp_min(0).sqrt()[:, None] * evecs.t()).float()


class LayerProbe:
    """Relative change of one decoder layer's output, the layer re-run on the inputs it saw."""

    def __init__(self, model: nn.Module, adapter: Adapter, batches: Sequence[torch.Tensor]):
        self.layers = adapter.layers
        n = adapter.num_layers
        self.inputs: list[list[tuple[tuple, dict]]] = [[] for _ in range(n)]
        self.outputs: list[list[torch.Tensor]] = [[] for _ in range(n)]

        def capture(i: int):
            def pre(_module: nn.Module, args: tuple, kwargs: dict) -> None:
                self.inputs[i].append((args, dict(kwargs)))

            def post(_module: nn.Module, _args: tuple, _kwargs: dict, out: Any) -> None:
                self.outputs[i].append(_hidden(out).detach())

            return pre, post

        with ExitStack() as stack, torch.no_grad():
            for i, layer in enumerate(self.layers):
                pre, post = capture(i)
                stack.callback(layer.register_forward_pre_hook(pre, with_kwargs=True).remove)
                stack.callback(layer.register_forward_hook(post, with_kwargs=True).remove)
            for batch in batches:
                _backbone(model)(input_ids=batch, **forward_kwargs(adapter))

    def error(self, layer: int, changes: Sequence[Change]) -> float:
        module = self.layers[layer]
        total, count = 0.0, 0
        with swapped(changes), torch.no_grad():
            for (args, kwargs), ref in zip(self.inputs[layer], self.outputs[layer]):
                out = _hidden(module(*args, **kwargs)).float()
                ref32 = ref.float()
                rel = (out - ref32).norm(dim=-1) / ref32.norm(dim=-1).clamp_min(1e-12)
                total += float(rel.sum())
                count += rel.numel()
        return total / max(count, 1)


PROBES = {"module-error": ModuleProbe, "layer-error": LayerProbe, "kl": KLProbe}


def _projections(adapter: Adapter, i: int) -> list[nn.Linear]:
    p = adapter.layer(i)
    return [p.q, p.k, p.v, p.o, *p.mlp_in, p.mlp_out]
