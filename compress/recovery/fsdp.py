"""FSDP for models too large to keep whole on every process: torch's ``fully_shard`` ("FSDP2").

``choose_strategy`` picks how several processes share the work: DDP (each
holds the whole model, its gradients and AdamW state: about 16 bytes per
fp32 parameter) or FSDP (each holds 1/world of them).  ``"auto"`` takes FSDP
from ``AUTO_FSDP_PARAMS`` parameters on, where DDP's copies stop fitting a
typical accelerator alongside activations and the teacher.

The caller's model stays a plain module: FSDP turns the modules it shards
into other classes and hooks them, and such a model can be neither deep-copied
nor saved as usual.  So training runs on ``sharded_copy``: a copy built on the
meta device (no memory), sharded decoder layer by decoder layer and then at
the root, whose shards are then filled from the caller's weights.  At the end
``copy_back`` gathers the trained weights into the caller's model.

Gradients are reduce-scattered after every micro-batch (no ``no_sync``
under gradient accumulation): accumulating unsharded gradients would cost
the memory FSDP is there to save.

Sharded parameters are ``DTensor`` s.  ``full_tensor`` all-gathers one: a
collective, so every rank must make the same calls in the same order.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from compress.arch import adapter_for

STRATEGIES = ("auto", "ddp", "fsdp")
AUTO_FSDP_PARAMS = 1_000_000_000


def choose_strategy(requested: str, n_params: int, world: int, fsdp_from: int = AUTO_FSDP_PARAMS) -> str:
    """``"single"`` on one process; else ``requested``, with ``"auto"`` meaning FSDP from ``fsdp_from`` parameters."""
    if world <= 1:
        return "single"
    if requested == "auto":
        return "fsdp" if n_params >= fsdp_from else "ddp"
    return requested


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: all-gathered if ``t`` is sharded (a collective), ``t`` itself otherwise."""
    return t.full_tensor() if is_sharded(t) else t


def gathered(tensors: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """Full CPU copies of ``tensors`` (sharded ones all-gathered, in the dict's order); empty where not ``keep``.

    Every rank must call it with the same names when any tensor is sharded.
    """
    out = {}
    for name, t in tensors.items():
        full = full_tensor(t.detach())
        if keep:
            out[name] = full.to("cpu", copy=True).contiguous()
    return out


def shard_like(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``param``: this rank's shard if ``param`` is sharded (no communication:
    every rank holds ``full``), else ``full`` on ``param``'s device."""
    if not is_sharded(param):
        return full.to(param.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.device_mesh.device_type), param.device_mesh, param.placements,
                             src_data_rank=None)


@torch.no_grad()
def load_full(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the whole tensor ``full`` into ``param`` (into this rank's shard when sharded)."""
    param.copy_(shard_like(param, full.to(param.dtype)))


def sharded_copy(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """A copy of ``model`` with every decoder layer, then the root, sharded over ``world`` processes on ``device``.

    The copy is built on the meta device, so the model is never held twice;
    its shards and buffers are then filled from ``model``.  Tied parameters
    stay tied.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    work = copy.deepcopy(model, memo)
    mesh = init_device_mesh(device.type, (world,))
    for layer in adapter_for(work).layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(work, mesh=mesh)
    work.to_empty(device=device)
    source = dict(model.named_parameters())
    for name, p in work.named_parameters():
        load_full(p, source[name].detach())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, b in work.named_buffers():
            b.copy_(buffers[name])
    return work


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters a no-grad forward leaves on the root (it keeps them for a backward
    that does not come), so the registered parameters are the shards again."""
    if hasattr(model, "reshard"):
        model.reshard()


@torch.no_grad()
def copy_back(params: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Gather the trained ``params`` (of a ``sharded_copy``) into ``model``'s parameters of the same names."""
    target = dict(model.named_parameters())
    for name, p in params.items():
        target[name].copy_(full_tensor(p.detach()).to(target[name].device))
