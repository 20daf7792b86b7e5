"""Training data: validation, and the order in which sequences are visited.

The order is an endless stream of epochs, each a permutation of the training
sequences drawn from a private generator seeded with ``(seed, epoch)``.  The
k-th sample of the stream is therefore a pure function of k, so the data
position of a run is just the number of samples consumed (``step *
global_batch``): a resumed run, or a run on another number of processes with
the same global batch, visits the same sequences in the same order.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from compress.data import TextSplits
from compress.recovery.config import RecoverError

_EPOCH_STRIDE = 1_000_003  # mixes the epoch into the seed; a prime keeps (seed, epoch) pairs apart


@dataclass
class TrainData:
    train: torch.Tensor  # [n, seq_len] int64
    eval: torch.Tensor | None  # [m, seq_len] int64 or None
    fingerprint: str  # of the training sequences: ties checkpoints and offline teachers to them

    @property
    def seq_len(self) -> int:
        return self.train.shape[1]


def fingerprint_tokens(t: torch.Tensor) -> str:
    digest = hashlib.sha256(repr(tuple(t.shape)).encode())
    digest.update(t.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def prepare_data(data: Any, eval_data: Any, vocab_size: int | None, eval_sequences: int | None) -> TrainData:
    """Check and normalise ``data`` (``TextSplits`` or token ids) and the held-out part."""
    if data is None:
        raise RecoverError(
            "recover() needs training data: pass data=compress.load_text(files, tokenizer) or token ids [n, seq_len]."
        )
    if isinstance(data, TextSplits):
        train, held_out = data.train, data.eval if eval_data is None else eval_data
    else:
        train, held_out = data, eval_data
    train = _tokens(train, "training data", vocab_size)
    ev = None if held_out is None else _tokens(held_out, "held-out data", vocab_size)
    if ev is not None and eval_sequences is not None:
        ev = ev[:eval_sequences]
    return TrainData(train, ev, fingerprint_tokens(train))


def _tokens(data: Any, what: str, vocab_size: int | None) -> torch.Tensor:
    if isinstance(data, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in data):
        data = torch.stack(list(data)) if data else torch.empty(0, 0, dtype=torch.long)
    if not isinstance(data, torch.Tensor):
        raise RecoverError(
            f"The {what} must be TextSplits or a tensor of token ids [n, seq_len], got {type(data).__name__}; "
            f"make it with compress.load_text(files, tokenizer)."
        )
    if data.dtype.is_floating_point or data.dtype == torch.bool or data.is_complex():
        raise RecoverError(f"The {what} must hold integer token ids, got dtype {data.dtype}.")
    if data.dim() == 1:
        data = data.unsqueeze(0)
    if data.dim() != 2:
        raise RecoverError(f"The {what} must be token ids [n, seq_len], got shape {tuple(data.shape)}.")
    if data.numel() == 0:
        raise RecoverError(f"The {what} is empty (shape {tuple(data.shape)}); give more text or a shorter seq_len.")
    if data.shape[1] < 2:
        raise RecoverError(f"The {what} has sequences of {data.shape[1]} token; next-token training needs at least 2.")
    lo, hi = int(data.min()), int(data.max())
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        bad = lo if lo < 0 else hi
        raise RecoverError(
            f"The {what} holds token id {bad}, outside the student's vocabulary of {vocab_size}; "
            f"tokenise the text with the student's tokenizer."
        )
    return data.long()


class DataOrder:
    """Sample ``k`` of the stream -> index of a training sequence."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def indices(self, start: int, count: int) -> torch.Tensor:
        out = [int(self.permutation(k // self.n)[k % self.n]) for k in range(start, start + count)]
        return torch.tensor(out, dtype=torch.long)


def micro_batch_start(step: int, micro: int, rank: int, batch_size: int, grad_accum: int, world: int) -> int:
    """First stream sample of one process's micro-batch: each step takes one global batch of
    ``batch_size * grad_accum * world`` consecutive samples, split micro-batch by micro-batch, rank by rank."""
    global_batch = batch_size * grad_accum * world
    return step * global_batch + (micro * world + rank) * batch_size


def shard(seqs: Sequence | torch.Tensor, rank: int, world: int) -> Any:
    """Every ``world``-th row starting at ``rank``: the evaluation share of one process."""
    return seqs[rank::world]
