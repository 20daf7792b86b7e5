"""Several processes: torchrun / ``accelerate launch`` set the environment, we join the group.

Nothing here is needed on one process: every helper is a no-op there.  When
``torch.distributed`` is already initialised it is used as is; when only the
launcher's environment variables are set (``WORLD_SIZE`` > 1), the group is
created (NCCL with CUDA, gloo without) and destroyed again at the end.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False  # we initialised the group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistInfo:
    """Join (or create, from the launcher's environment) the default process group."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, created=True)


def shutdown(info: DistInfo) -> None:
    if info.created and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0 (or on a single process): the one that writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel on several processes; the model itself on one."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def no_sync(model: nn.Module, skip: bool) -> ContextManager[Any]:
    """Skip DDP's gradient all-reduce on the micro-batches before the last of an accumulation."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return nullcontext()


def _collective_device(info: DistInfo, device: torch.device) -> torch.device:
    # NCCL moves CUDA tensors only; gloo takes CPU ones.
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, info: DistInfo, device: torch.device) -> torch.Tensor:
    if not info.enabled:
        return t
    x = t.detach().to(_collective_device(info, device), torch.float64)
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x.to(t.device)


def all_reduce_mean(t: torch.Tensor, info: DistInfo, device: torch.device) -> torch.Tensor:
    return all_reduce_sum(t, info, device) / info.world if info.enabled else t


def all_gather(t: torch.Tensor, info: DistInfo, device: torch.device) -> list[torch.Tensor]:
    """``t`` from every rank (same shape and dtype everywhere), in rank order."""
    if not info.enabled:
        return [t]
    x = t.detach().to(_collective_device(info, device))
    out = [torch.empty_like(x) for _ in range(info.world)]
    dist.all_gather(out, x)
    return [o.cpu() for o in out]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def rng_states(info: DistInfo, device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's torch random states (uint8 tensors), keyed ``cpu.rank{r}`` / ``cuda.rank{r}``."""
    out = {f"cpu.rank{r}": s for r, s in enumerate(all_gather(torch.get_rng_state(), info, device))}
    if device.type == "cuda":
        states = all_gather(torch.cuda.get_rng_state(device), info, device)
        out.update({f"cuda.rank{r}": s for r, s in enumerate(states)})
    return out


def set_rng_states(states: dict[str, torch.Tensor], info: DistInfo, device: torch.device) -> None:
    torch.set_rng_state(states[f"cpu.rank{info.rank}"].to(torch.uint8).cpu())
    key = f"cuda.rank{info.rank}"
    if device.type == "cuda" and key in states:
        torch.cuda.set_rng_state(states[key].to(torch.uint8).cpu(), device)
