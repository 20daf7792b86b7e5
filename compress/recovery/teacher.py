"""The teacher: checks against the student, and offline top-k logits on disk.

``precompute_teacher`` runs the teacher once over the training sequences and
stores, for every position that predicts a next token, the ``k`` largest
log-probabilities of its next-token distribution at temperature ``T`` and
their token ids.  Training then needs only these files, not the teacher
(the loss and its approximation are in ``losses.py``).  A directory:

- ``topk.json``: format, ``k``, ``temperature``, ``vocab_size``, ``seq_len``,
  ``sequences``, ``rows_per_shard``, the training data's fingerprint, shard names;
- ``topk-00000.safetensors``, ...: ``logprobs`` float16 ``[rows, seq_len - 1,
  k]`` and ``indices`` int32 of the same shape, ``rows_per_shard`` sequences
  each.  Storage is 6 bytes per (position, k): 64 entries cost 384 bytes per token.

Under several processes each rank computes every ``world``-th shard.
"""
from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.arch import is_causal_lm
from compress.io.atomic import check_output_dir
from compress.recovery.batches import fingerprint_tokens
from compress.recovery.config import RecoverError
from compress.recovery.distributed import DistInfo, barrier
from compress.recovery.losses import topk_logprobs

FORMAT_VERSION = 1
INDEX = "topk.json"
_SHARD_BYTES = 256 * 2**20


def vocab_size(model: nn.Module) -> int | None:
    """Rows of the output head (what the logits have), else the config's vocab_size."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    out = getattr(head, "out_features", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    return int(out) if out else None


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a teacher that cannot be distilled from: an encoder, or another vocabulary."""
    if not is_causal_lm(teacher):
        raise RecoverError("The teacher is not a causal language model; distil from the decoder the student was made from.")
    vs, vt = vocab_size(student), vocab_size(teacher)
    if vs is not None and vt is not None and vs != vt:
        raise RecoverError(
            f"The teacher has {vt} vocabulary entries and the student {vs}; distillation compares next-token "
            f"distributions, so both must share a tokenizer (use the model the student was compressed from)."
        )


class OfflineTeacher:
    """Top-k teacher log-probabilities stored by ``precompute_teacher``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        index = self.path / INDEX
        if not index.is_file():
            raise RecoverError(f"'{self.path}' has no {INDEX}; give a directory written by precompute_teacher.")
        meta = json.loads(index.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise RecoverError(f"'{self.path}' has top-k format {meta.get('format')!r}; precompute the teacher again.")
        self.meta = meta
        self.k, self.temperature = int(meta["k"]), float(meta["temperature"])
        self.vocab_size, self.seq_len = int(meta["vocab_size"]), int(meta["seq_len"])
        self.sequences, self.rows_per_shard = int(meta["sequences"]), int(meta["rows_per_shard"])
        self.fingerprint = meta["fingerprint"]
        missing = [s for s in meta["shards"] if not (self.path / s).is_file()]
        if missing:
            raise RecoverError(f"'{self.path}' lacks {missing[:3]}; it is incomplete, precompute the teacher again.")
        self._handles: dict[int, Any] = {}

    def check(self, train: torch.Tensor, fingerprint: str, vocab: int | None, temperature: float) -> None:
        """Refuse logits made for other data, another vocabulary or another temperature."""
        if fingerprint != self.fingerprint or tuple(train.shape) != (self.sequences, self.seq_len):
            raise RecoverError(
                f"The top-k teacher logits in '{self.path}' were computed for other training data "
                f"({self.sequences} x {self.seq_len} tokens, fingerprint {self.fingerprint}; this run has "
                f"{train.shape[0]} x {train.shape[1]}, {fingerprint}); precompute them for this data."
            )
        if vocab is not None and vocab != self.vocab_size:
            raise RecoverError(
                f"The top-k teacher logits in '{self.path}' come from a vocabulary of {self.vocab_size} and the "
                f"student has {vocab}; both must share a tokenizer."
            )
        if abs(temperature - self.temperature) > 1e-12:
            raise RecoverError(
                f"The top-k teacher logits in '{self.path}' were computed at temperature {self.temperature:g} and "
                f"the config asks for {temperature:g}; use that temperature or precompute again."
            )

    def lookup(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logprobs float32, indices int64)``, each ``[len(rows), seq_len - 1, k]``."""
        vals, idxs = [], []
        for row in rows.tolist():
            f = self._open(row // self.rows_per_shard)
            local = row % self.rows_per_shard
            vals.append(f.get_slice("logprobs")[local : local + 1])
            idxs.append(f.get_slice("indices")[local : local + 1])
        return torch.cat(vals).float(), torch.cat(idxs).long()

    def _open(self, shard: int) -> Any:
        from safetensors import safe_open

        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.path / self.meta["shards"][shard]), framework="pt")
        return self._handles[shard]


@torch.no_grad()
def precompute_teacher(
    teacher: nn.Module,
    sequences: torch.Tensor,
    path: str | Path,
    *,
    k: int = 64,
    temperature: float = 1.0,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    autocast: Callable[[], Any] | None = None,
    dist_info: DistInfo | None = None,
) -> OfflineTeacher:
    """Store the teacher's top-k next-token log-probabilities over ``sequences`` ``[n, seq_len]`` in ``path``.

    ``sequences`` are the training token ids (a ``TextSplits``' ``train``);
    ``k`` must be below the vocabulary size.  The directory appears only
    when complete.
    """
    info = dist_info or DistInfo()
    sequences = getattr(sequences, "train", sequences)
    if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2 or sequences.numel() == 0 or sequences.shape[1] < 2:
        raise RecoverError("precompute_teacher needs non-empty token ids [n, seq_len] with seq_len >= 2.")
    vocab = vocab_size(teacher)
    if vocab is not None and not 0 < k < vocab:
        raise RecoverError(f"teacher_topk must be between 1 and the vocabulary size {vocab} (exclusive), got {k}.")
    n, seq_len = sequences.shape
    rows = max(1, min(n, _SHARD_BYTES // (6 * (seq_len - 1) * k)))
    shards = [f"topk-{i:05d}.safetensors" for i in range((n + rows - 1) // rows)]
    target = Path(path).expanduser().resolve()
    tmp = target.parent / f".{target.name}.partial"
    if info.is_main:
        check_output_dir(target, overwrite)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    mine = list(range(info.rank, len(shards), info.world))
    bar = tqdm(total=sum(min(rows, n - s * rows) for s in mine), desc="teacher top-k", unit="seq",
               disable=not progress or not info.is_main, leave=False)
    try:
        for s in mine:
            _write_shard(teacher, sequences[s * rows : (s + 1) * rows], tmp / shards[s], k, temperature,
                         batch_size, device, autocast, bar)
    finally:
        teacher.train(was_training)
        bar.close()
    barrier(info)
    if info.is_main:
        meta = {"format": FORMAT_VERSION, "k": k, "temperature": temperature, "vocab_size": vocab,
                "seq_len": seq_len, "sequences": n, "rows_per_shard": rows,
                "fingerprint": fingerprint_tokens(sequences), "shards": shards}
        (tmp / INDEX).write_text(json.dumps(meta, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    barrier(info)
    return OfflineTeacher(target)


def _write_shard(teacher, seqs, file, k, temperature, batch_size, device, autocast, bar) -> None:
    from safetensors.torch import save_file

    vals, idxs = [], []
    for ids in torch.split(seqs, batch_size):
        with autocast() if autocast is not None else nullcontext():
            logits = teacher(input_ids=ids.to(device)).logits[:, :-1]
        v, i = topk_logprobs(logits, k, temperature)
        vals.append(v.to(torch.float16).cpu())
        idxs.append(i.to(torch.int32).cpu())
        bar.update(len(ids))
    save_file({"logprobs": torch.cat(vals).contiguous(), "indices": torch.cat(idxs).contiguous()}, file)
