"""How far a weight change moves the model's next-token distributions: KL(original || changed).

A *change* is ``(linear, new_weight)``.  ``KLProbe`` runs the unmodified model
once on its batches, keeping the output log-probabilities, then answers
``error(layer, changes)`` for any number of changes by re-running the whole
model with the weights swapped in place (``swapped``: always restored).
Sensitivity (``metric="kl"``), the size budget and pruning's kv-group choice
use it; it sits here, below all three, so none of them imports another.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compress.arch import Adapter
from compress.errors import CompressError

Change = tuple[nn.Linear, torch.Tensor]


@contextmanager
def swapped(changes: Sequence[Change]) -> Iterator[None]:
    """Give each linear its new weight for the duration of the block, then restore the old one."""
    backups: list[Change] = []
    with torch.no_grad():
        try:
            for lin, weight in changes:
                backups.append((lin, lin.weight.detach().clone()))
                lin.weight.copy_(weight)
            yield
        finally:
            for lin, weight in reversed(backups):
                lin.weight.copy_(weight)


def forward_kwargs(adapter: Adapter) -> dict[str, Any]:
    """Keyword arguments of a plain forward: no KV cache for decoders."""
    return {"use_cache": False} if adapter.spec.causal else {}


class KLProbe:
    """KL(original || changed) of the model's output distributions, averaged over tokens."""

    def __init__(self, model: nn.Module, adapter: Adapter, batches: Sequence[torch.Tensor]):
        self.model, self.adapter, self.batches = model, adapter, list(batches)
        with torch.no_grad():
            self.reference = [self.log_probs(b) for b in self.batches]

    def log_probs(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=batch, **forward_kwargs(self.adapter))
        logits = getattr(out, "logits", None)
        if logits is None:
            raise CompressError(
                f"{type(self.model).__name__} returns no logits, so metric='kl' cannot be measured; "
                "use metric='layer-error' or 'module-error'."
            )
        return F.log_softmax(logits.float(), dim=-1)

    def error(self, layer: int, changes: Sequence[Change]) -> float:
        total, count = 0.0, 0
        with swapped(changes), torch.no_grad():
            for batch, ref in zip(self.batches, self.reference):
                changed = self.log_probs(batch)
                total += float(F.kl_div(changed, ref, log_target=True, reduction="sum"))
                count += ref.shape[0] * ref.shape[1]
        return max(total / max(count, 1), 0.0)  # float rounding can dip a hair below zero
