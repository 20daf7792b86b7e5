"""Coupled pruning groups of one layer, as index arithmetic on its projections.

An MLP channel c is row c of every ``mlp_in`` (gate and up, or BERT's
intermediate) and column c of ``mlp_out``.  A kv group g is kv head g (its
``head_dim`` rows of k and v), the query heads h with ``h // n_rep == g`` (as
transformers' ``repeat_kv`` pairs them: contiguous blocks of ``n_rep``), their
q rows and the matching o columns.  ``head_dim`` is never pruned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from compress.arch import LayerParts
from compress.errors import CompressError


@dataclass(frozen=True)
class LayerGroups:
    """The shape facts of one layer that pruning needs, and the groups' parameter costs."""

    index: int
    head_dim: int
    num_heads: int
    num_kv_heads: int
    mlp_width: int
    mlp_channel_params: int  # parameters one MLP channel holds
    kv_group_params: int  # parameters one kv group holds

    @property
    def n_rep(self) -> int:
        return self.num_heads // self.num_kv_heads

    def query_heads(self, group: int) -> list[int]:
        """The query heads that read kv head ``group``."""
        return list(range(group * self.n_rep, (group + 1) * self.n_rep))

    def kv_rows(self, groups: Sequence[int]) -> torch.Tensor:
        """Rows of k and v (columns nowhere) that belong to ``groups``."""
        return _head_channels(groups, self.head_dim)

    def q_rows(self, groups: Sequence[int]) -> torch.Tensor:
        """Rows of q, and columns of o, that belong to ``groups``."""
        heads = [h for g in groups for h in self.query_heads(g)]
        return _head_channels(heads, self.head_dim)

    def params(self, mlp_width: int, kv_groups: int) -> int:
        """Prunable parameters of this layer at the given widths."""
        return mlp_width * self.mlp_channel_params + kv_groups * self.kv_group_params


def _head_channels(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    heads_t = torch.as_tensor(list(heads), dtype=torch.long)
    return (heads_t[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def layer_groups(parts: LayerParts) -> LayerGroups:
    """Read a layer's groups from its projections; raise if its heads don't form GQA groups."""
    hd = parts.head_dim
    for lin, what in ((parts.q, "q"), (parts.k, "k"), (parts.v, "v")):
        if lin.out_features % hd:
            raise CompressError(
                f"Layer {parts.index}: {what} has {lin.out_features} outputs, not a multiple of head_dim {hd}."
            )
    heads, kv = parts.num_heads, parts.num_kv_heads
    if kv == 0 or heads % kv or parts.v.out_features != parts.k.out_features or parts.o.in_features != heads * hd:
        raise CompressError(
            f"Layer {parts.index} has {heads} query heads, {kv} kv heads and o_proj of "
            f"{parts.o.in_features} inputs, which do not form grouped-query attention."
        )
    n_rep = heads // kv
    mlp_cost = sum(m.in_features + (m.bias is not None) for m in parts.mlp_in) + parts.mlp_out.out_features
    kv_cost = hd * (
        sum(m.in_features + (m.bias is not None) for m in (parts.k, parts.v))
        + n_rep * (parts.q.in_features + (parts.q.bias is not None))
        + n_rep * parts.o.out_features
    )
    return LayerGroups(parts.index, hd, heads, kv, parts.mlp_width, mlp_cost, kv_cost)
