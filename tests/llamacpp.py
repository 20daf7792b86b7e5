"""Run GGUF files in a real llama.cpp: the command-line tools `make setup-llamacpp` builds.

The tools are looked for in $COMPRESS_LM_LLAMACPP, else
$COMPRESS_LM_CACHE/llama.cpp/bin (default ~/.cache/compress-lm/llama.cpp/bin);
tests that need them skip, saying how to build them, when they are absent.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

TOOLS = ("llama-tokenize", "llama-perplexity", "llama-simple")


def tools_dir() -> Path:
    if os.environ.get("COMPRESS_LM_LLAMACPP"):
        return Path(os.environ["COMPRESS_LM_LLAMACPP"])
    cache = Path(os.environ.get("COMPRESS_LM_CACHE", Path.home() / ".cache" / "compress-lm"))
    return cache / "llama.cpp" / "bin"


def tool(name: str) -> str:
    path = tools_dir() / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"llama.cpp's {name} is not built (no {path}); run `make setup-llamacpp`")
    return str(path)


def _run(args: list[str], **kw) -> str:
    """stdout, then stderr (llama.cpp logs to both)."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    if done.returncode != 0:
        raise AssertionError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout + "\n" + done.stderr


def tokenize(gguf: Path, text: str) -> list[int]:
    """Token ids llama.cpp gives ``text`` (special tokens parsed, BOS/EOS as the file says)."""
    out = _run([tool("llama-tokenize"), "-m", str(gguf), "--stdin", "--ids", "--log-disable"], input=text)
    lists = re.findall(r"^\[[\d, ]*\]$", out, flags=re.M)
    assert lists, f"llama-tokenize printed no ids: {out[-500:]}"
    return [int(x) for x in re.findall(r"\d+", lists[0])]


@dataclass
class Scored:
    """What llama-perplexity measured: its perplexity, the token chunks, and its log-probabilities."""

    ppl: float
    chunks: np.ndarray  # (n_chunk, n_ctx) token ids
    logprobs: np.ndarray  # (n_chunk, n_ctx - 1 - n_ctx // 2, n_vocab), rounded to 16 bits over 16 nats


def perplexity(gguf: Path, text_file: Path, n_ctx: int, work: Path) -> Scored:
    """llama-perplexity on ``text_file`` in chunks of ``n_ctx``; it scores the second half of each chunk."""
    base = work / "llamacpp-logits.bin"
    out = _run([tool("llama-perplexity"), "-m", str(gguf), "-f", str(text_file), "-c", str(n_ctx), "-b", str(n_ctx),
                "-t", "2", "--kl-divergence-base", str(base)], stdin=subprocess.DEVNULL)
    raw = base.read_bytes()
    # "_logits_", n_ctx, n_vocab, n_chunk (int32), the chunks' token ids, then per scored position
    # (scale, min log-prob) as two float32 and n_vocab uint16 steps above the minimum (padded to even)
    assert raw[:8] == b"_logits_", "not a llama-perplexity logits file"
    ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(raw[8:20], dtype=np.int32))
    assert ctx == n_ctx
    ids_end = 20 + 4 * n_chunk * n_ctx
    chunks = np.frombuffer(raw[20:ids_end], dtype=np.int32).reshape(n_chunk, n_ctx)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = np.frombuffer(raw[ids_end:], dtype=np.uint16).reshape(n_chunk, -1, nv)
    head = rows[..., :4].copy().view(np.float32)  # (scale, min_log_prob) per row
    logprobs = head[..., 1:2] + head[..., 0:1] * rows[..., 4:4 + n_vocab].astype(np.float32)
    ppl = _final_ppl(out)
    return Scored(ppl, chunks, logprobs)


def _final_ppl(stdout: str) -> float:
    # the last "[i]ppl," entry is the perplexity over every chunk
    values = re.findall(r"\[\d+\]([\d.]+)", stdout)
    if not values:
        raise AssertionError(f"llama-perplexity printed no perplexity: {stdout[-500:]}")
    return float(values[-1])


def ours(model: torch.nn.Module, scored: Scored) -> tuple[float, np.ndarray]:
    """compress-lm's perplexity on llama.cpp's chunks and positions, and its top-1 tokens there."""
    n_ctx = scored.chunks.shape[1]
    first = n_ctx // 2
    ids = torch.from_numpy(scored.chunks.astype(np.int64))
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()[:, first:n_ctx - 1]
    logp = torch.log_softmax(logits, dim=-1)
    targets = ids[:, first + 1:]
    nll = -logp.gather(-1, targets[..., None]).mean()
    return float(torch.exp(nll)), logp.argmax(-1).numpy()


def top1_agreement(scored: Scored, our_top1: np.ndarray) -> float:
    return float((scored.logprobs.argmax(-1) == our_top1).mean())


def greedy(gguf: Path, prompt: str, n: int) -> bytes:
    """The bytes llama-simple prints: ``prompt`` and its greedy continuation of ``n`` tokens."""
    done = subprocess.run([tool("llama-simple"), "-m", str(gguf), "-n", str(n), prompt], capture_output=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def token_bytes(tokenizer, ids: list[int]) -> bytes:
    """The bytes a byte-level BPE's tokens stand for (what llama.cpp prints, without UTF-8 repair)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    back = {c: b for b, c in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    out = b""
    for i, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        out += piece.encode() if i in special else bytes(back[c] for c in piece)
    return out
