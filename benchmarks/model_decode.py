"""End-to-end decode speed: a model with packed QuantLinear layers against the same model in bf16.

    python benchmarks/model_decode.py                                  # SmolLM2-135M and a 1B-class config, batch 1 and 16
    python benchmarks/model_decode.py --models 1b-random --batches 1 --graphs compile
    python benchmarks/model_decode.py --smoke --out-dir /tmp/decode    # CPU: tiny shapes, checks the script only

Every row greedily decodes ``--new-tokens`` tokens after a ``--prompt-len``
prefill, with a static KV cache (transformers' ``StaticCache``), for one
model variant at one batch size: ``dense`` (the model as built, bf16 on a
GPU), ``int4`` (RTN, groups of ``--group-size``), ``int3`` (the same, 3-bit codes), ``ternary`` (absmean), and
``int4+head`` / ``ternary+head`` (the output head quantised too, when it is
not tied to the embeddings).  Variants are made with ``compress.quantize``.
Prefill and decode are timed separately (median of ``--reps`` runs after
warm-up) and both run as CUDA graphs: captured by hand (``--graphs capture``,
the default) or through ``torch.compile(mode="reduce-overhead")`` (``--graphs
compile``, decode step only).  Before timing, one graphed decode step is
compared with the same step run eagerly.  Reports tokens/s, the speedup over
``dense`` at the same batch, weight / KV-cache / peak memory, and the kernels
dispatch used, to ``benchmarks/results/decode-<gpu>.json`` (rewritten after
every row, so an interrupted run keeps what it measured) and a PNG beside it.

Weights: SmolLM2-135M uses the built-in model's real weights when its package
is installed, else random weights of the same shapes (speed does not depend
on the values); ``1b-random`` is a Llama-3.2-1B-sized config (hidden 2048,
16 layers, 32 heads / 8 kv heads, MLP 8192, vocab 128256) with random
weights and an untied output head.

``--smoke`` runs on the CPU in seconds: a tiny random model, fp32, eager,
the PyTorch reference kernels.  It checks the script end to end; its
figures are not speed claims.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from compress.errors import CompressError
from compress.io.atomic import write_file

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GRAPH_MODES = ("capture", "compile", "none")
GRAPH_LABELS = {"capture": "CUDA graphs (captured)", "compile": "torch.compile", "none": "eager"}


class BenchError(CompressError):
    """Benchmark settings that cannot run as given."""


# --------------------------------------------------------------------------- models

@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: transformers config fields, and optionally a built-in with real weights."""

    name: str
    description: str
    config: dict  # ``model_type`` picks the config class; the rest are its fields
    builtin: Optional[str] = None  # compress built-in name, loaded when installed


_LLAMA_STYLE = dict(model_type="llama", hidden_act="silu", attention_bias=False, mlp_bias=False)
SPECS = {
    s.name: s
    for s in (
        ModelSpec(
            "smollm2-135m",
            "SmolLM2-135M-Instruct: hidden 576, 30 layers, 9/3 heads, MLP 1536, vocab 49152, tied head",
            dict(_LLAMA_STYLE, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                 max_position_embeddings=8192),
            builtin="smollm2-135m",
        ),
        ModelSpec(
            "1b-random",
            "1B-class (Llama-3.2-1B sizes): hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocab 128256, untied head",
            dict(_LLAMA_STYLE, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=False,
                 max_position_embeddings=4096),
        ),
        ModelSpec(
            "tiny-random",
            "tiny smoke-test model: hidden 128, 2 layers, 4/2 heads, MLP 256, vocab 512, untied head",
            dict(_LLAMA_STYLE, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=512, tie_word_embeddings=False,
                 max_position_embeddings=512),
        ),
    )
}

# variant -> (quantisation method or None for the model as built, whether the output head is quantised too)
VARIANTS: dict[str, tuple[Optional[str], bool]] = {
    "dense": (None, False),
    "int4": ("int4", False),
    "int3": ("int3", False),
    "ternary": ("ternary", False),
    "int4+head": ("int4", True),
    "ternary+head": ("ternary", True),
}
BASELINE = "dense"


def build_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int, real_weights: bool = True):
    """``(model, weights)``: the built-in's real weights when asked and installed, else random ones of the spec's shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    why_random = "random weights"
    if spec.builtin and real_weights:
        import compress

        try:
            model, _ = compress.load_model(spec.builtin, dtype=dtype, device=device)
            return model, f"real weights (built-in {spec.builtin})"
        except (CompressError, ImportError, OSError) as exc:  # package or gguf missing, e.g. on a bare GPU machine
            why_random = f"random weights: the built-in could not be loaded ({str(exc).splitlines()[0][:200]})"
    fields = dict(spec.config)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: seconds for 1B on a GPU, not minutes on the CPU
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.to(dtype).eval(), why_random


def head_is_tied(model) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and emb is not None and head.weight is emb.weight


def quant_config(variant: str, group_size: int):
    """The ``QuantConfig`` a variant is made with (None for the dense baseline)."""
    from compress.quantization import QuantConfig
    from compress.quantization.config import SHORTHANDS

    method, head = VARIANTS[variant]
    if method is None:
        return None
    keep = () if head else ("lm_head",)  # "lm_head" names the output head whatever its path
    return QuantConfig(**SHORTHANDS[method], group_size=group_size, modules_to_not_convert=keep, progress=False)


# --------------------------------------------------------------------------- decoding

class Decoder:
    """Greedy decoding of ``batch`` sequences with a static KV cache: one prefill, then one token per step.

    ``graphs``: ``"none"`` runs eagerly; ``"capture"`` records the prefill and
    the decode step once each in a CUDA graph and replays them; ``"compile"``
    runs the decode step through ``torch.compile`` (mode reduce-overhead on
    CUDA, which records CUDA graphs itself) and the prefill eagerly.
    Positions and the causal mask are computed on the device from the cache's
    own length counter, so a recorded step stays right as the cache fills, and
    a 4D mask bypasses transformers' mask builder, whose host-side checks
    cannot run inside a graph capture.
    """

    def __init__(self, model, batch: int, prompt_len: int, new_tokens: int, graphs: str = "none",
                 compile_backend: str = "inductor", seed: int = 0) -> None:
        from transformers import StaticCache

        self.model, self.graphs, self.compile_backend = model, graphs, compile_backend
        self.device = next(model.parameters()).device
        self.new_tokens, self.max_len = new_tokens, prompt_len + new_tokens
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        vocab = model.get_input_embeddings().num_embeddings
        gen = torch.Generator().manual_seed(seed)
        self.prompt = torch.randint(vocab, (batch, prompt_len), generator=gen).to(self.device)
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=self.device)  # next input, updated in place
        self.logits: Optional[torch.Tensor] = None  # last position's logits of the latest step
        self.key_positions = torch.arange(self.max_len, device=self.device)
        attn = getattr(model.config, "_attn_implementation", "sdpa")
        if attn not in ("sdpa", "eager"):
            raise BenchError(f"the model uses attention implementation {attn!r}; build it with attn_implementation='sdpa'.")
        self.additive_mask = attn == "eager"  # eager attention adds the mask; sdpa takes booleans
        self._graphs: dict[str, Any] = {}
        self._compiled: Optional[Callable] = None

    # -- one forward ---------------------------------------------------------
    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, q = ids.shape
        start = self.cache.get_seq_length()  # a device tensor once the cache holds keys (0 before)
        positions = torch.arange(q, device=self.device) + start
        mask = (self.key_positions[None, :] <= positions[:, None])[None, None].expand(batch, 1, q, self.max_len)
        if self.additive_mask:
            dtype = self.model.get_input_embeddings().weight.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill(~mask, torch.finfo(dtype).min)
        out = self.model(input_ids=ids, position_ids=positions[None], attention_mask=mask,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def _prefill_eager(self) -> None:
        self.logits = self._forward(self.prompt)
        self.ids.copy_(self.logits.argmax(-1, keepdim=True))

    def _decode_eager(self) -> None:
        self.logits = self._forward(self.ids)
        self.ids.copy_(self.logits.argmax(-1, keepdim=True))

    def _decode_step(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._forward(ids)
        return logits, logits.argmax(-1, keepdim=True)

    # -- set-up --------------------------------------------------------------
    def prepare(self, warmup: int) -> None:
        """Warm up eagerly (kernel compilation, cuBLAS handles, cache allocation), then record graphs or compile."""
        on_cuda = self.device.type == "cuda"
        side = torch.cuda.Stream() if on_cuda else None
        if side is not None:  # warm-up before a capture belongs on a side stream
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if side is not None else nullcontext():
            for _ in range(max(1, warmup)):
                self.cache.reset()
                self._prefill_eager()
                for _ in range(min(3, self.new_tokens)):
                    self._decode_eager()
        if side is not None:
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
        if self.graphs != "none" and not isinstance(self.cache.get_seq_length(), torch.Tensor):
            raise RuntimeError("the static cache keeps its length on the host; a recorded step would reuse stale positions")
        if self.graphs == "capture":
            if not on_cuda:
                raise BenchError("--graphs capture records CUDA graphs and needs a CUDA GPU; use --graphs none or compile on the CPU.")
            self.cache.reset()
            for name, body in (("prefill", self._prefill_eager), ("decode", self._decode_eager)):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    body()
                self._graphs[name] = (graph, self.logits)  # the graph's own output tensor, rewritten on replay
        elif self.graphs == "compile":
            torch._dynamo.reset()
            # reduce-overhead (CUDA graphs) is an inductor mode; other backends take none
            mode = "reduce-overhead" if on_cuda and self.compile_backend == "inductor" else None
            self._compiled = torch.compile(self._decode_step, mode=mode, backend=self.compile_backend)
            for _ in range(max(1, warmup)):  # compile, record, replay
                self.prefill()
                for _ in range(min(3, self.new_tokens)):
                    self.decode()

    # -- steps ---------------------------------------------------------------
    def prefill(self) -> None:
        self.cache.reset()
        if "prefill" in self._graphs:
            graph, self.logits = self._graphs["prefill"]
            graph.replay()
        else:
            self._prefill_eager()

    def decode(self) -> None:
        if "decode" in self._graphs:
            graph, self.logits = self._graphs["decode"]
            graph.replay()
        elif self._compiled is not None:
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            self.logits, next_ids = self._compiled(self.ids)
            self.ids.copy_(next_ids)
        else:
            self._decode_eager()

    def generate(self) -> torch.Tensor:
        """Prefill, then ``new_tokens`` decode steps; the ``[batch, new_tokens + 1]`` greedy tokens (for checks)."""
        self.prefill()
        tokens = [self.ids.clone()]
        for _ in range(self.new_tokens):
            self.decode()
            tokens.append(self.ids.clone())
        return torch.cat(tokens, dim=1)

    def check_against_eager(self) -> float:
        """Max |difference| of one graphed/compiled decode step's logits from the eager step's, relative to max |logit|."""
        self.cache.reset()
        self._prefill_eager()
        self._decode_eager()
        reference = self.logits.float().clone()
        self.prefill()
        self.decode()
        got = self.logits.float().clone()
        return float((got - reference).abs().max() / reference.abs().max().clamp(min=1e-12))

    def run(self) -> tuple[float, float]:
        """Seconds of one prefill and of ``new_tokens`` decode steps after it."""
        _sync(self.device)
        start = time.perf_counter()
        self.prefill()
        _sync(self.device)
        middle = time.perf_counter()
        for _ in range(self.new_tokens):
            self.decode()
        _sync(self.device)
        return middle - start, time.perf_counter() - middle

    def cache_bytes(self) -> int:
        return sum(t.nbytes for layer in getattr(self.cache, "layers", [])
                   for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if isinstance(t, torch.Tensor))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- rows

@dataclass
class Settings:
    """Everything a run needs, resolved from the command line (GPU defaults or the CPU smoke ones)."""

    models: list[str]
    variants: list[str]
    batches: list[int]
    prompt_len: int
    new_tokens: int
    reps: int
    warmup: int
    graphs: str
    compile_backend: str
    group_size: int
    dtype: torch.dtype
    device: torch.device
    seed: int
    smoke: bool
    real_weights: bool = True


def bench_model(spec: ModelSpec, s: Settings, emit: Callable[[dict], None]) -> dict:
    """Build each variant of ``spec`` once, run every batch size on it; ``emit`` gets each row as it is measured."""
    import compress
    from compress.kernels import choose_kernel, dispatch

    info: dict[str, Any] = {"description": spec.description}
    for variant in s.variants:
        model, weights = build_model(spec, s.device, s.dtype, s.seed, s.real_weights)
        info["weights"] = weights
        base = {"model": spec.name, "variant": variant}
        method, head = VARIANTS[variant]
        if head and head_is_tied(model):
            emit({**base, "skipped": "the output head is tied to the input embeddings, so compress.quantize keeps it"})
            del model
            continue
        quant = None
        if method is not None:
            report = compress.quantize(model, quant_config(variant, s.group_size))
            quant = {"config": report.config, "modules": len(report.modules), "bits_per_weight": report.bits_per_weight,
                     "kept": len(report.skipped)}
        weight_bytes = _model_bytes(model)
        for batch in s.batches:
            row = {**base, "batch": batch, "weights_bytes": weight_bytes, "quantisation": quant}
            if method is not None:
                backend = dispatch._backend(torch.empty(0, device=s.device))
                row["kernels"] = {"backend": backend}
                if backend == "triton":
                    row["kernels"].update(decode=choose_kernel(method, batch), prefill=choose_kernel(method, batch * s.prompt_len))
            try:
                row.update(_time_row(model, batch, s))
            except torch.OutOfMemoryError as exc:
                row["error"] = f"out of memory: {str(exc).splitlines()[0][:200]}"
            except BenchError:
                raise
            except Exception as exc:  # noqa: BLE001 - record it and go on with the other rows
                row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            row["kernel_fallbacks"] = dict(dispatch._FAILED)
            emit(row)
            gc.collect()
            if s.device.type == "cuda":
                torch.cuda.empty_cache()
        del model
        gc.collect()
        if s.device.type == "cuda":
            torch.cuda.empty_cache()
    return info


def _time_row(model, batch: int, s: Settings) -> dict:
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    with torch.no_grad():
        decoder = Decoder(model, batch, s.prompt_len, s.new_tokens, s.graphs, s.compile_backend, s.seed)
        decoder.prepare(s.warmup)
        check = decoder.check_against_eager() if s.graphs != "none" else None
        decoder.run()  # one untimed run through the recorded graphs
        times = [decoder.run() for _ in range(s.reps)]
    prefill_s = statistics.median(t[0] for t in times)
    decode_s = statistics.median(t[1] for t in times)
    row = {
        "graphs": s.graphs,
        "prefill_graphs": s.graphs == "capture",
        "graph_check_rel_err": check,
        "prefill_ms": prefill_s * 1e3,
        "prefill_tokens_per_s": batch * s.prompt_len / prefill_s,
        "decode_ms_per_step": decode_s / s.new_tokens * 1e3,
        "decode_tokens_per_s": batch * s.new_tokens / decode_s,
        "decode_runs_s": [round(t[1], 6) for t in times],
        "kv_cache_bytes": decoder.cache_bytes(),
    }
    if s.device.type == "cuda":
        row["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(s.device)
    del decoder
    return row


def _model_bytes(model) -> int:
    from compress.sizes import bytes_in_memory

    return bytes_in_memory(model)


def add_speedups(rows: list[dict]) -> None:
    """Speedup of every row over the dense row of the same model and batch, measured in the same run."""
    for row in rows:
        base = next((r for r in rows if r.get("model") == row.get("model") and r.get("batch") == row.get("batch")
                     and r["variant"] == BASELINE and "decode_tokens_per_s" in r), None)
        if base is None or "decode_tokens_per_s" not in row:
            continue
        row["decode_speedup"] = row["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        row["prefill_speedup"] = row["prefill_tokens_per_s"] / base["prefill_tokens_per_s"]
        row["weights_ratio"] = base["weights_bytes"] / row["weights_bytes"]


# --------------------------------------------------------------------------- report

def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _versions() -> dict:
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version()}




def write_json(path: Path, report: dict) -> None:
    write_file(path, lambda p: p.write_text(json.dumps(report, indent=1)))


def plot(report: dict, path: Path) -> None:
    """Decode tokens/s per variant and batch (speedup over dense on each bar), and weight memory, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "decode_tokens_per_s" in r]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(max(1, len(models)), 2, figsize=(13, 4.2 * max(1, len(models))), squeeze=False)
    for i, name in enumerate(models):
        mine = [r for r in rows if r["model"] == name]
        variants = list(dict.fromkeys(r["variant"] for r in mine))
        batches = sorted({r["batch"] for r in mine})
        width = 0.8 / max(1, len(variants))
        ax = axes[i][0]
        for j, variant in enumerate(variants):
            by_batch = {r["batch"]: r for r in mine if r["variant"] == variant}
            xs = [b + j * width for b in range(len(batches)) if batches[b] in by_batch]
            ys = [by_batch[b]["decode_tokens_per_s"] for b in batches if b in by_batch]
            bars = ax.bar(xs, ys, width, label=variant, color=f"C{j}")
            for bar, b in zip(bars, [b for b in batches if b in by_batch]):
                speedup = by_batch[b].get("decode_speedup")
                if speedup is not None:
                    ax.annotate(f"{speedup:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=7)
        ax.set_xticks([b + 0.4 - width / 2 for b in range(len(batches))])
        ax.set_xticklabels([f"batch {b}" for b in batches])
        ax.set_ylabel("decode tokens/s")
        ax.set_title(f"{name}: decode, {GRAPH_LABELS[report['graphs']]}")
        ax.legend(fontsize=7)
        ax = axes[i][1]
        first = {r["variant"]: r for r in mine}
        ax.bar(range(len(first)), [r["weights_bytes"] / 2**20 for r in first.values()], color=[f"C{j}" for j in range(len(first))])
        ax.set_xticks(range(len(first)))
        ax.set_xticklabels(list(first), fontsize=8)
        ax.set_ylabel("weights in memory (MiB)")
        ax.set_title(f"{name}: weights")
    fig.suptitle(f"end-to-end decode on {report['device']}, {report['dtype']}, prompt {report['prompt_len']}, "
                 f"{report['new_tokens']} new tokens" + (" (CPU smoke run: not a speed claim)" if report["smoke"] else ""))
    fig.tight_layout()
    write_file(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


# --------------------------------------------------------------------------- command line

GPU_DEFAULTS = dict(models=["smollm2-135m", "1b-random"], variants=list(VARIANTS), batches=[1, 16], prompt_len=128,
                    new_tokens=128, reps=5, warmup=2, graphs="capture", dtype="bfloat16")
SMOKE_DEFAULTS = dict(models=["tiny-random"], variants=list(VARIANTS), batches=[1, 2], prompt_len=8, new_tokens=4,
                      reps=1, warmup=1, graphs="none", dtype="float32")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="benchmarks/model_decode.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=list(SPECS), help=f"default: {' '.join(GPU_DEFAULTS['models'])}")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all (dense is always run)")
    ap.add_argument("--batches", nargs="+", type=int, help="default: 1 16")
    ap.add_argument("--prompt-len", type=int, help="prefill tokens per sequence (default 128)")
    ap.add_argument("--new-tokens", type=int, help="decode steps timed per run (default 128)")
    ap.add_argument("--reps", type=int, help="timed runs per row, median reported (default 5)")
    ap.add_argument("--warmup", type=int, help="eager warm-up runs before recording graphs (default 2)")
    ap.add_argument("--graphs", choices=GRAPH_MODES, help="capture: CUDA graphs by hand (default); compile: torch.compile "
                    "reduce-overhead; none: eager")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --graphs compile")
    ap.add_argument("--group-size", type=int, default=128, help="int4 group size (default 128)")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="dense dtype (default bfloat16)")
    ap.add_argument("--random-weights", action="store_true", help="random weights even where a built-in is installed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="CPU check of the script: tiny model, fp32, eager, reference kernels")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--no-plot", action="store_true")
    return ap


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Fill unset options from the GPU or smoke defaults and check them; one BenchError names every bad value."""
    defaults = SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS
    pick = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    variants = list(dict.fromkeys([BASELINE, *pick["variants"]]))
    bad = [f"--{name.replace('_', '-')} {value}" for name, value in
           (("batches", min(pick["batches"])), ("prompt_len", pick["prompt_len"]), ("new_tokens", pick["new_tokens"]),
            ("reps", pick["reps"])) if value < 1]
    if bad:
        raise BenchError(f"{', '.join(bad)}: batch sizes, --prompt-len, --new-tokens and --reps must be at least 1.")
    if pick["warmup"] < 0:
        raise BenchError(f"--warmup {pick['warmup']}: the number of warm-up runs cannot be negative.")
    device = torch.device("cuda" if not args.smoke else "cpu")
    if device.type == "cpu" and pick["graphs"] == "capture":
        raise BenchError("--graphs capture records CUDA graphs and needs a CUDA GPU; use --graphs none or compile on the CPU.")
    too_long = [m for m in pick["models"] if pick["prompt_len"] + pick["new_tokens"] > SPECS[m].config["max_position_embeddings"]]
    if too_long:
        limit = min(SPECS[m].config["max_position_embeddings"] for m in too_long)
        raise BenchError(f"--prompt-len plus --new-tokens is {pick['prompt_len'] + pick['new_tokens']}, more than the "
                         f"{limit} positions of {', '.join(too_long)}; use shorter ones.")
    for variant in variants:
        quant_config(variant, args.group_size)  # a bad --group-size fails here, before any model is built
    return Settings(models=pick["models"], variants=variants, batches=pick["batches"], prompt_len=pick["prompt_len"],
                    new_tokens=pick["new_tokens"], reps=pick["reps"], warmup=pick["warmup"], graphs=pick["graphs"],
                    compile_backend=args.compile_backend, group_size=args.group_size, dtype=getattr(torch, pick["dtype"]),
                    device=device, seed=args.seed, smoke=args.smoke, real_weights=not args.random_weights)


def output_stem(out_dir: Path, s: Settings) -> Path:
    from compress.kernels.tuning import device_slug

    slug = "smoke-cpu" if s.smoke else device_slug(_device_name(s.device))
    usual = (SMOKE_DEFAULTS if s.smoke else GPU_DEFAULTS)["graphs"]
    return out_dir / ("decode-" + slug + ("" if s.graphs == usual else f"-{s.graphs}"))


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark; 0 when every row was measured, 1 when some failed, 2 without a GPU (and no --smoke)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/model_decode.py needs a CUDA GPU and none is visible here; run it on a GPU machine, or pass "
              "--smoke for a quick CPU check of the script (tiny model, not a speed claim).", file=sys.stderr)
        return 2
    s = resolve_settings(args)
    if s.smoke:
        torch.set_num_threads(1)  # a tiny model gains nothing from threads, and they stall on a busy CPU
    stem = output_stem(args.out_dir, s)
    report: dict[str, Any] = {
        "benchmark": "end-to-end greedy decode, static KV cache",
        "command": " ".join(shlex.quote(a) for a in ["benchmarks/model_decode.py", *argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(s.device),
        **_versions(),
        "smoke": s.smoke,
        "note": "CPU smoke run: tiny model, eager, reference kernels; checks the script, not a speed claim" if s.smoke
        else "tokens/s of greedy decoding; speedups are over the dense model at the same batch in this run",
        "cpu_threads": torch.get_num_threads(),
        "dtype": str(s.dtype).removeprefix("torch."),
        "graphs": s.graphs,
        "prompt_len": s.prompt_len,
        "new_tokens": s.new_tokens,
        "reps": s.reps,
        "warmup": s.warmup,
        "group_size": s.group_size,
        "models": {},
        "rows": [],
        "complete": False,
    }
    started = time.time()

    def emit(row: dict) -> None:
        report["rows"].append(row)
        add_speedups(report["rows"])
        report["seconds"] = round(time.time() - started, 1)
        write_json(stem.with_suffix(".json"), report)  # after every row: a killed run keeps what it measured
        print(_row_line(row), flush=True)

    for name in s.models:
        report["models"][name] = bench_model(SPECS[name], s, emit)
    report["complete"] = True
    report["seconds"] = round(time.time() - started, 1)
    write_json(stem.with_suffix(".json"), report)
    wrote = f"wrote {stem}.json"
    if not args.no_plot:
        try:
            plot(report, stem.with_suffix(".png"))
            wrote += f" and {stem}.png"
        except ImportError:
            wrote += " (no plot: matplotlib is not installed)"
    print(wrote)
    return 1 if any("error" in r for r in report["rows"]) else 0


def _row_line(row: dict) -> str:
    label = f"{row['model']:14s} {row['variant']:13s}"
    if "skipped" in row:
        return f"{label} skipped: {row['skipped']}"
    label += f" batch {row['batch']:<3d}"
    if "error" in row:
        return f"{label} error: {row['error'][:120]}"
    speedup = f" ({row['decode_speedup']:.2f}x)" if "decode_speedup" in row else ""
    return (f"{label} decode {row['decode_tokens_per_s']:10.1f} tok/s{speedup}  prefill "
            f"{row['prefill_tokens_per_s']:10.1f} tok/s  weights {row['weights_bytes'] / 2**20:8.1f} MiB")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CompressError as err:
        print(f"benchmarks/model_decode.py: {err}", file=sys.stderr)
        sys.exit(2)
