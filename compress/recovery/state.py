"""Training-state checkpoints: written atomically, checked before they are trusted, no pickle.

``output_dir/checkpoints/step-00000040/`` holds

- ``weights.safetensors``: the trainable parameters, by name;
- ``optimizer.safetensors``: AdamW's per-parameter state, keyed ``name::exp_avg`` etc.;
- ``rng.safetensors``: every rank's torch random state (uint8 tensors);
- ``best.safetensors``: the best weights so far, when early stopping keeps them;
- ``state.json``: the step (from which the data position and the schedules
  follow), the log so far, early-stopping counters, the config, fingerprints
  of the model, data and world size, and the sha256 of every file above.

Each directory appears only complete (``atomic_directory``), and a new one is
written before older ones are deleted, so a kill at any moment leaves the
last complete checkpoint readable.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.io.atomic import atomic_directory, sha256_file
from compress.recovery.config import RecoverError
from compress.recovery.fsdp import full_tensor, is_sharded, load_full, shard_like

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
STATE = "state.json"
WEIGHTS, OPTIMIZER, RNG, BEST = "weights.safetensors", "optimizer.safetensors", "rng.safetensors", "best.safetensors"
_PREFIX = "step-"


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def remove_stale_temporaries(output_dir: str | Path) -> None:
    """Temporary directories left by a write that was killed half-way."""
    root = checkpoint_root(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(f".{_PREFIX}") and ("tmp-" in p.name or "old-" in p.name):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, torch.Tensor],
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
    best: dict[str, torch.Tensor] | None = None,
    keep: int = 1,
) -> Path:
    """Write one checkpoint directory atomically, then drop all but the newest ``keep``.

    ``weights``: the trainable parameters by name; ``optimizer``: from
    ``optimizer_tensors``; both whole (gathered, if the model is sharded).
    """
    from safetensors.torch import save_file

    target = checkpoint_root(output_dir) / f"{_PREFIX}{step:08d}"
    with atomic_directory(target, overwrite=True) as tmp:
        save_file(_cpu(weights), tmp / WEIGHTS)
        save_file(_cpu(optimizer), tmp / OPTIMIZER)
        save_file(_cpu(rng), tmp / RNG)
        if best is not None:
            save_file(_cpu(best), tmp / BEST)
        files = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        doc = {"format": FORMAT_VERSION, "step": step, **state, "files": files}
        (tmp / STATE).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RecoverError(
            f"Checkpoint '{path}' has an unreadable {STATE} ({err}); delete that directory to resume from an older one."
        ) from err
    if state.get("format") != FORMAT_VERSION:
        raise RecoverError(
            f"Checkpoint '{path}' has format {state.get('format')!r}, this version reads {FORMAT_VERSION}; "
            f"start a new run in another output_dir."
        )
    return state


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint directory, checking every file against the sha256 in its state.json."""
    from safetensors.torch import load_file

    state = read_state(path)
    for name, digest in state.get("files", {}).items():
        f = path / name
        if not f.is_file() or sha256_file(f) != digest:
            raise RecoverError(
                f"Checkpoint file {f} is missing or does not match its sha256; delete '{path}' to resume from an "
                f"older checkpoint."
            )
    best = load_file(path / BEST) if (path / BEST).is_file() else None
    return Checkpoint(path, state, load_file(path / WEIGHTS), load_file(path / OPTIMIZER), load_file(path / RNG), best)


@torch.no_grad()
def restore_parameters(params: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], where: str) -> None:
    missing = sorted(set(params) - set(saved))
    extra = sorted(set(saved) - set(params))
    if missing or extra:
        raise RecoverError(
            f"The trainable parameters differ from those in {where} (missing {missing[:3]}, unexpected {extra[:3]}); "
            f"resume with the same model and config, or start a new run in another output_dir."
        )
    for name, p in params.items():
        if tuple(p.shape) != tuple(saved[name].shape) or p.dtype != saved[name].dtype:
            raise RecoverError(
                f"Parameter {name} is {tuple(p.shape)} {p.dtype} in the model but {tuple(saved[name].shape)} "
                f"{saved[name].dtype} in {where}; resume with the same model."
            )
        load_full(p, saved[name])


def restore_optimizer(optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    """Rebuild a torch optimizer state dict from ``name::key`` tensors and load it (each rank its
    shard of the moments of a sharded parameter)."""
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in saved.items():
        name, _, field = key.rpartition("::")
        if name not in params:
            raise RecoverError(
                f"The optimizer state names a parameter {name} the model does not train; resume with the same model and config."
            )
        p = params[name]
        if is_sharded(p) and t.dim() > 0 and tuple(t.shape) == tuple(p.shape):
            t = shard_like(p, t)
        per_param.setdefault(index[id(p)], {})[field] = t
    sd = optimizer.state_dict()
    sd["state"] = per_param
    optimizer.load_state_dict(sd)


def optimizer_tensors(optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as whole CPU tensors keyed ``name::key`` (empty where not ``keep``).

    Moments of sharded parameters are all-gathered: every rank must call it.
    """
    out = {}
    for name, p in params.items():
        for key, value in sorted(optimizer.state.get(p, {}).items()):
            value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            full = full_tensor(value.detach())
            if keep:
                out[f"{name}::{key}"] = full.to("cpu", copy=True).contiguous()
    return out


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
