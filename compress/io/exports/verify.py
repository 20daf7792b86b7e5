"""Check an export the way its users will load it: with a loader that is not compress-lm's.

A fresh Python process with ``import compress`` blocked loads the written
directory (see ``outside.py`` for the loaders) and computes logits for a
few tokens; they must match what this process expects the export to
compute, within ``TOLERANCE`` times the largest |logit|.  What is expected:

- hf, gptq, compressed-tensors: the model's own logits (the files hold
  exactly its weights, dequantised where the format stores floats), with
  16-bit activations for ternary modules (plain float matmuls);
- bitnet: transformers' BitLinear arithmetic (int8 per-token activations,
  division by the stored ``1/gamma``) on our weights.  With activations
  quantised, a one-ulp difference flips a rounding and grows through the
  layers, so the reference does the same operations, not merely the same
  maths; what the file must get right (codes, packing, scales) still shows.
  compress-lm's own A8 modules compute the same operations
  (``compress.kernels.formats.a8_rescale``), so for an ``a8`` model this is
  the model itself, and the "from the model as it was" figure is 0 in float32;
- gguf: the model with each float tensor rounded as the file stores it
  (F16, or Q8_0 through gguf's quantiser); int4 and ternary tensors are
  stored exactly, so their check is against our own dequantised weights.

RoPE frequencies are recomputed in float32 first (the outside loader
computes them so; a cast of the model to 16-bit rounds them).
The difference from the unmodified model is reported beside it.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from compress.io import remote_code
from compress.io.exports import gguf_arch
from compress.io.exports.base import Output
from compress.io.exports.common import ExportError, quantized_modules
from compress.io.storage import round_model_
from compress.kernels.formats import TernaryFormat

TOLERANCE = 1e-3  # relative to the largest |logit|
SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog, and then it rests."
MAX_TOKENS = 24
TIMEOUT_S = 600


def sample_ids(model: nn.Module, tokenizer: Any) -> tuple[torch.Tensor, Optional[str]]:
    vocab = model.get_input_embeddings().num_embeddings
    if tokenizer is not None:
        ids = tokenizer(SAMPLE_TEXT)["input_ids"][:MAX_TOKENS]
        if ids and max(ids) < vocab:
            return torch.tensor([ids]), SAMPLE_TEXT
    return (torch.arange(1, 17) % vocab).unsqueeze(0), None


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids.to(next(model.parameters()).device))[0].float().cpu()


class _AsBitLinear(nn.Module):
    """transformers' ``BitLinear.forward`` (integrations/bitnet.py) on our ternary codes, op for op."""

    def __init__(self, module: nn.Module, weight_scale: torch.Tensor):
        super().__init__()
        gamma = module.scales.detach().to(torch.float32).reshape(-1, 1)
        self.register_buffer("ternary", (module.dequantize_weight(torch.float32) / gamma).round())
        self.register_buffer("weight_scale", weight_scale.to(torch.float32))
        self.register_buffer("bias", None if module.bias is None else module.bias.detach().to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        x_q = (x * scale).round().clamp(-128, 127).to(torch.int8).to(torch.float32)
        y = torch.nn.functional.linear(x_q, self.ternary) / (self.weight_scale * scale)
        return y if self.bias is None else y + self.bias


def _float32_rope(ref: nn.Module) -> None:
    """Recompute non-persistent float buffers (RoPE frequencies) from the config, as a fresh load does."""
    from transformers import PreTrainedModel

    for module in ref.modules():
        if isinstance(module, PreTrainedModel) or not hasattr(module, "config"):
            continue
        transient = [n for n, b in module.named_buffers(recurse=False)
                     if n in module._non_persistent_buffers_set and b is not None and b.is_floating_point()]
        if not transient:
            continue
        try:
            fresh = type(module)(module.config)
        except Exception:  # noqa: BLE001 - a module that cannot be rebuilt keeps its buffers
            continue
        for n in transient:
            module._buffers[n] = getattr(fresh, n).to(torch.float32)


def reference_model(model: nn.Module, fmt: str, out: Output) -> nn.Module:
    """A float32 copy that computes what the export is meant to compute (see the module docstring)."""
    stored = out.details.get("dtype")  # formats that store floats in one dtype: the reference holds them so
    ref = copy.deepcopy(model)
    if stored:
        round_model_(ref, getattr(torch, stored))
    ref = ref.float().cpu().eval()
    _float32_rope(ref)
    packed = quantized_modules(ref)
    for name, m in packed.items():
        if not isinstance(m.format, TernaryFormat):
            continue
        if fmt == "bitnet":
            inverse = (1.0 / m.scales.detach().to(torch.float64).reshape(1)).to(torch.float32)  # as bitnet_state writes it
            ref.set_submodule(name, _AsBitLinear(m, inverse))
        else:
            m.activations = "a16"
    params = dict(ref.named_parameters())
    for name, value in out.expected.items():
        module, _, leaf = name.rpartition(".")
        if module in packed and leaf == "weight":
            old = packed[module]
            linear = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None)
            linear.weight.data = value.to(torch.float32)
            if old.bias is not None:
                linear.bias.data = old.bias.detach().to(torch.float32)
            ref.set_submodule(module, linear)
        elif name in params:
            params[name].data = value.to(torch.float32).reshape(params[name].shape)
    _float_tables(ref, out.expected)
    return ref


class _FloatTable(nn.Module):
    """A quantised embedding table as a float file holds it: a lookup (times a Gemma3-style scale) or a head."""

    def __init__(self, weight: torch.Tensor, table: nn.Module):
        super().__init__()
        self.weight = nn.Parameter(weight.to(torch.float32), requires_grad=False)
        self.role, self.embed_scale = table.role, table.embed_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.role == "head":
            return torch.nn.functional.linear(x, self.weight.to(x.dtype))
        rows = torch.nn.functional.embedding(x, self.weight)
        if self.embed_scale is not None:
            rows = rows * torch.tensor(self.embed_scale, dtype=torch.float32).to(rows.dtype)
        return rows


def _float_tables(ref: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """Quantised embeddings (and the heads tied to them) hold the dequantised tables the file stores."""
    from compress.io.exports.common import quantized_embeddings

    swapped = {}
    for name, table in quantized_embeddings(ref).items():
        if f"{name}.weight" in expected:
            swapped[id(table)] = _FloatTable(expected[f"{name}.weight"], table)
            ref.set_submodule(name, swapped[id(table)])
    for name, m in list(ref.named_modules()):
        if getattr(m, "kind", None) == "tied_head" and id(m.table) in swapped:
            table = swapped[id(m.table)]
            head = nn.Linear(table.weight.shape[1], table.weight.shape[0], bias=False)
            head.weight = table.weight  # still one tensor, as the tie in the file
            ref.set_submodule(name, head)


@dataclass
class _Job:
    fmt: str
    directory: Path
    args: dict[str, Any]
    expected: torch.Tensor
    as_is: torch.Tensor
    text: Optional[str]
    tokenizer: Any


def check(fmt: str, directory: Path, model: nn.Module, tokenizer: Any, out: Output) -> str:
    """Load ``directory`` outside compress-lm, compare logits; return one sentence or raise ``ExportError``."""
    return check_many([(fmt, directory, model, tokenizer, out)])[0]


def check_many(exports: list[tuple[str, Path, nn.Module, Any, Output]], *, raise_errors: bool = True) -> list[Any]:
    """``check`` for several exports with one outside process (its start-up, importing transformers, dominates).

    With ``raise_errors=False`` a failing export gives its ``ExportError`` in the list instead of raising.
    """
    with tempfile.TemporaryDirectory(prefix="compress-verify-") as tmp:
        jobs = []
        for i, (fmt, directory, model, tokenizer, out) in enumerate(exports):
            ids, text = sample_ids(model, tokenizer)
            job_dir = Path(tmp) / str(i)
            job_dir.mkdir()
            jobs.append(_Job(fmt, Path(directory), _args(fmt, Path(directory), model, out, ids, text, job_dir),
                             _logits(reference_model(model, fmt, out), ids),
                             _logits(copy.deepcopy(model).float().cpu().eval(), ids), text, tokenizer))
        results = _run([j.args for j in jobs], Path(tmp))
        out: list[Any] = []
        for job, result in zip(jobs, results):
            try:
                out.append(_judge(job, result))
            except ExportError as err:
                if raise_errors:
                    raise
                out.append(err)
        return out


def _judge(job: _Job, result: dict[str, Any]) -> str:
    from safetensors.torch import load_file

    fmt, directory = job.fmt, job.directory
    if "error" in result:
        raise ExportError(f"The {fmt} export in '{directory}' did not load outside compress-lm ({result['error']}); "
                          f"this is a bug, please report it (export with verify=False to keep the files anyway).")
    got = load_file(job.args["out"])["logits"]
    expected = job.expected
    if got.shape != expected.shape:
        raise ExportError(f"The {fmt} export in '{directory}' gives logits of shape {list(got.shape)} instead of "
                          f"{list(expected.shape)} when loaded outside compress-lm; this is a bug, please report it.")
    scale = max(1.0, float(expected.abs().max()))
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE * scale:
        raise ExportError(f"The {fmt} export in '{directory}' does not reproduce the model: loaded outside compress-lm, "
                          f"its logits differ by {diff:.3g} (tolerance {TOLERANCE * scale:.3g}); this is a bug, please report it.")
    loader = {"transformers": f"transformers {result['transformers']}", "gptq": "an independent GPTQ unpacker + transformers",
              "gguf_reader": "gguf's GGUFReader + transformers"}[job.args["mode"]]
    linears = ", ".join(f"{n} {c}" for c, n in sorted(result["modules"].items()) if "Linear" in c)
    sentence = (f"loaded by {loader} without compress-lm as {result['class']} ({linears}); max |logit difference| "
                f"{diff:.2e} (tolerance {TOLERANCE * scale:.2e})")
    drift = float((got - job.as_is).abs().max())
    if drift > diff:
        sentence += f", {drift:.2e} from the model as it was (what the format itself changes)"
    tokens, text = result.get("tokens"), job.text
    if text is not None and isinstance(tokens, str):
        sentence += f"; tokenizer not checked ({tokens[:100]})"
    elif text is not None and tokens is not None:
        same = tokens == job.tokenizer(text)["input_ids"]
        sentence += "; tokenizer gives the same ids" if same else f"; tokenizer gives other ids: {str(tokens)[:100]}"
    return sentence + "."


def _args(fmt: str, directory: Path, model: nn.Module, out: Output, ids: torch.Tensor, text: Optional[str], tmp: Path) -> dict[str, Any]:
    args: dict[str, Any] = {
        "path": str(directory), "auto": remote_code.auto_map_key(model), "ids": ids.tolist(), "text": text,
        "out": str(tmp / "logits.safetensors"), "remote": (directory / f"{remote_code.MODULE}.py").is_file(),
        "mode": "gptq" if fmt == "gptq" else "transformers",
    }
    if fmt == "compressed-tensors" and out.details.get("asymmetric"):
        args["dequantize"] = True
    if fmt == "gguf":
        args["gguf_file"] = out.details["gguf_file"]
        if out.details["architecture"] not in gguf_arch.TRANSFORMERS_READS:
            from compress.arch import adapter_for

            modeling = tmp / f"{remote_code.MODULE}.py"
            modeling.write_text(remote_code.modeling_file(adapter_for(model), type(model).__name__))
            args.update(mode="gguf_reader", base_class=type(model).__name__, modeling_file=str(modeling),
                        modeling_class=remote_code.CLASS)
    return args


def _run(jobs: list[dict[str, Any]], tmp: Path) -> list[dict[str, Any]]:
    script = (Path(__file__).parent / "outside.py").read_text()
    # BitLinear wraps its unpacking in torch.compile, which takes half a minute per shape on a CPU; the same
    # eager code runs without it.
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    what = ", ".join(sorted({str(j["path"]) for j in jobs}))
    try:
        res = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True, text=True,
                             cwd=tmp, env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise ExportError(f"Checking the export in {what} took more than {TIMEOUT_S} s; export again with "
                          f"verify=False (--no-verify) to skip the check.") from err
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or len(lines) != len(jobs):
        last = (res.stderr.strip().splitlines() or ["no output"])[-1][:400]
        raise ExportError(f"The outside loader stopped while checking {what} ({last}); this is a bug, please "
                          f"report it (export with verify=False to keep the files anyway).")
    return [json.loads(line) for line in lines]
