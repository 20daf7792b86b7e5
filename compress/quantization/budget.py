"""A size budget: choose each module's format so the weights file fits ``target_size`` with the least predicted error.

    report = compress.quantize(model, QuantConfig(target_size="80MiB"), data=text)
    print(report.table())          # the format of every module, predicted and measured size and error

Steps (``plan_budget``), all before any weight changes:

1. **Units.**  Every decoder projection the base config would quantise is a
   unit with candidate formats (``target_formats``: ``keep`` = stored in the
   checkpoint's float dtype, ``int4-g128`` / ``g64`` / ``g32``, ``int3-g128`` /
   ``g64`` / ``g32``, ``ternary``);
   the input embedding with the output head (a tied pair is one table) is one
   unit with ``keep``, ``embeddings-int8`` and ``embeddings-int4``.  Modules
   an override or ``modules_to_not_convert`` pins are fixed, not chosen.
2. **Bytes** of each unit in each format from the storage rules: a meta
   ``QuantLinear`` / ``QuantEmbedding`` as quantisation would build it, its
   state cast as ``compress.save`` casts it (``compress.io.storage``: packed
   scales and zero points keep their dtype, other floats the stored dtype),
   plus each tensor's safetensors header entry.  The fixed tensors (norms,
   pinned modules) are counted the same way.  The smallest reachable size is
   known here: a budget below it is refused before anything is measured.
3. **Errors.**  ``compress.sensitivity.measure_sensitivity`` measures every
   projection under each format (``target_metric``, round-to-nearest,
   ``target_sequences`` calibration windows).  The embedding formats are
   measured as the KL of the model's output distributions to the original's
   with the table swapped (``compress.output_kl.KLProbe``).  To add
   them up, the probe's errors are put on the KL scale: KL grows with the
   square of a small weight perturbation, so a projection's predicted KL is
   ``a_f * error**2``, with ``a_f`` fitted once per format f: the KL of
   quantising every projection at once to f over the sum of their squared
   errors (one forward per format; a single scale for all formats made
   ternary look 4x cheaper than it is on SmolLM2-135M).  Under
   ``target_metric="kl"`` the errors are KL already.
4. **Choice.**  A multiple-choice knapsack (dynamic programme over bytes in
   steps of about 1/200,000 of the budget, rounded up so the plan never
   exceeds it) picks one format per unit minimising the summed predicted KL;
   the bytes the rounding left are then spent greedily (most error saved per
   byte); where the rounding leaves no plan at all (a budget within a few
   quanta of the smallest size), the classic greedy (least error added per
   byte saved) decides.

``compress.quantization.apply.quantize_to_size`` then quantises through ``QuantConfig.overrides`` and
``embeddings`` and measures the result's KL on the same windows:
``BudgetReport`` holds the format of every module, predicted and stored
bytes, predicted and measured KL.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from compress.sizes import format_size, parse_size  # noqa: F401  (re-exported)
from compress.quantization.config import OUTPUT_HEAD, Int4Config, QuantConfig, QuantError
from compress.quantization.report import QuantReport

LINEAR_FORMATS = ("keep", "int4-g128", "int4-g64", "int4-g32", "int3-g128", "int3-g64", "int3-g32", "ternary")
EMBEDDING_CHOICES = {"keep": None, "embeddings-int8": "int8", "embeddings-int4": "int4"}
# the sensitivity format that measures each of our linear formats
SENSITIVITY_NAMES = {**{f"int{b}-g{g}": f"int{b}-g{g}" for b in (4, 3) for g in (128, 64, 32)},
                     "ternary": "ternary-absmean"}
DP_STEPS = 200_000  # byte quanta of the knapsack
_SAFETENSORS_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
                      torch.int64: "I64", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


# -- sizes ----------------------------------------------------------------------------------------

def _entry_bytes(name: str, t: torch.Tensor) -> int:
    """Bytes of one tensor in a safetensors file: its data and its header entry (offsets assumed 10 digits each)."""
    entry = json.dumps({name: {"dtype": _SAFETENSORS_DTYPE.get(t.dtype, "F32"), "shape": list(t.shape),
                               "data_offsets": [10**9, 10**9]}}, separators=(",", ":"))
    return t.numel() * t.element_size() + len(entry) - 1  # the braces of the single-key object become one comma


def state_bytes(state: dict[str, torch.Tensor], dtype: torch.dtype, keep: set[str] | frozenset = frozenset()) -> int:
    """Bytes ``state`` takes in a safetensors file with floats (other than ``keep``) stored as ``dtype``."""
    from compress.io.storage import is_cast

    total = 0
    for name, t in state.items():
        if is_cast(name, t, keep):
            t = torch.empty(t.shape, dtype=dtype, device="meta")
        total += _entry_bytes(name, t)
    return total


def file_overhead() -> int:
    """The header's fixed part: its length field, ``{"__metadata__":{"format":"pt"}}`` and padding to 8 bytes."""
    return 8 + len('{"__metadata__":{"format":"pt"}}') + 8


def stored_file_bytes(model: nn.Module, dtype: Any = None) -> int:
    """Predicted bytes of the ``model.safetensors`` that ``compress.save(model, dtype=dtype)`` writes."""
    from compress.io.state import unique_state
    from compress.io.storage import packed_names, stored_dtype

    tensors, _ = unique_state(model)
    return file_overhead() + state_bytes(tensors, stored_dtype(dtype), packed_names(model))


def _module_bytes(prefix: str, module: nn.Module, dtype: torch.dtype) -> int:
    from compress.io.storage import packed_names

    state = {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
    return state_bytes(state, dtype, {f"{prefix}.{k}" for k in packed_names(module)})


def linear_bytes(name: str, linear: nn.Linear, cfg: Optional[QuantConfig], dtype: torch.dtype) -> int:
    """Stored bytes of ``linear`` kept (``cfg`` None) or quantised with ``cfg``, from a meta module as quantisation builds it."""
    from compress.quantization.linear import QuantLinear

    if cfg is None:
        meta = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    else:
        meta = QuantLinear.empty_for(linear, cfg, device="meta")
    return _module_bytes(name, meta, dtype)


# -- the plan -----------------------------------------------------------------------------------------

@dataclass
class Option:
    format: str  # one of target_formats
    config: Optional[QuantConfig]  # linear: the module's config (None: keep); embedding: None
    bytes: int
    error: float = 0.0  # predicted KL contribution, nats per token
    raw_error: Optional[float] = None  # the probe's own figure


@dataclass
class Unit:
    name: str
    kind: str  # "linear" or "embedding"
    shape: tuple[int, int]
    options: list[Option]
    choice: int = 0
    hessian: Optional[torch.Tensor] = None  # embedding: the head's input Hessian its codes are chosen against

    @property
    def chosen(self) -> Option:
        return self.options[self.choice]


@dataclass
class BudgetPlan:
    """The formats chosen within ``target_bytes``; ``config`` quantises the model as planned."""

    target_bytes: int
    units: list[Unit]
    fixed_bytes: int  # tensors not chosen here (norms, pinned modules) and the header's fixed part
    config: QuantConfig  # the base config with the choices as overrides / embeddings, target_size None
    metric: str
    scale: dict[str, float]  # per format: a in predicted KL = a * error**2 (empty under the kl metric)
    sequences: int
    seq_len: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    probe: Any = None  # the KLProbe holding the original's output distributions on the windows
    guard: dict[str, float] = field(default_factory=dict)  # measured KL of the plan and each uniform candidate
    guard_choice: Optional[str] = None  # "plan" or the uniform candidate kept

    @property
    def predicted_bytes(self) -> int:
        return self.fixed_bytes + sum(u.chosen.bytes for u in self.units)

    @property
    def predicted_error(self) -> float:
        return sum(u.chosen.error for u in self.units)


def smallest_bytes(units: list[Unit], fixed: int) -> int:
    return fixed + sum(min(o.bytes for o in u.options) for u in units)


def _units_and_fixed(model: nn.Module, cfg: QuantConfig, dtype: torch.dtype) -> tuple[list[Unit], int, list[str]]:
    """Units with their options' bytes (errors not yet measured), and the bytes of everything else."""
    from compress.arch import UnsupportedModelError, adapter_for
    from compress.io.state import unique_state
    from compress.io.storage import packed_names
    from compress.quantization.embedding import embedding_problems
    from compress.quantization.plan import make_plan
    from compress.sensitivity.config import format_config

    try:
        adapter = adapter_for(model)
    except UnsupportedModelError as exc:
        raise QuantError(f"A size budget measures each decoder layer and needs a supported model family: {exc}") from None
    base = dataclasses.replace(cfg, target_size=None)
    plan = make_plan(model, base)
    prefixes = tuple(adapter.layer_name(i) + "." for i in range(adapter.num_layers))
    notes: list[str] = []
    units: list[Unit] = []
    owned: set[str] = set()  # state names a unit accounts for
    linear_formats = [f for f in cfg.target_formats if f in LINEAR_FORMATS]
    for t in plan.targets:
        if t.config is not base or not t.name.startswith(prefixes):
            continue  # pinned by an override, or outside the decoder layers: fixed below
        lin = t.module
        options = []
        for fmt in linear_formats:
            if fmt == "keep":
                options.append(Option(fmt, None, linear_bytes(t.name, lin, None, dtype)))
                continue
            fitted = format_config(SENSITIVITY_NAMES[fmt], lin.out_features, lin.in_features)
            if fitted is None:
                continue
            # the base config's other fields, in the fitted format (switching method drops the other method's)
            grouping = {"group_size": fitted.group_size, "bits": fitted.bits} if isinstance(fitted, Int4Config) else {}
            qcfg = dataclasses.replace(base, method=fitted.method, **grouping, overrides={}, modules_to_not_convert=())
            options.append(Option(fmt, qcfg, linear_bytes(t.name, lin, qcfg, dtype)))
        if not options:
            continue  # no candidate fits: quantised with the base config, counted as fixed
        units.append(Unit(t.name, "linear", (lin.out_features, lin.in_features), options))
        owned.update({f"{t.name}.weight", f"{t.name}.bias"})
    emb_formats = [f for f in cfg.target_formats if f in EMBEDDING_CHOICES and f != "keep"]
    if cfg.embeddings is not None:
        notes.append(f"embeddings={cfg.embeddings!r} was given: the embedding table is {cfg.embeddings}, not chosen.")
        emb_formats = [f"embeddings-{cfg.embeddings}"]
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb_formats and cfg.embeddings is None and any(t.module is head for t in plan.targets):
        notes.append("the output head is quantised as a linear module (modules_to_not_convert lacks 'lm_head'), which "
                     "leaves no quantised embedding format for the table: it stays as it is.")
        emb_formats = []
    if emb_formats and isinstance(embed, nn.Embedding):
        problems = embedding_problems(model, emb_formats[0].split("-")[1], cfg.embedding_group_size)
        if problems:
            raise QuantError("Cannot quantise the embeddings: " + "; ".join(problems) + ".")
        unit = _embedding_unit(model, embed, cfg, emb_formats, dtype)
        units.append(unit)
        owned.update(unit_state_names(model, cfg))
    tensors, _ = unique_state(model)
    rest = {n: t for n, t in tensors.items() if n not in owned}
    fixed = file_overhead() + state_bytes(rest, dtype, packed_names(model))
    # pinned / outside targets are quantised as their config says: count their packed size, not their float one
    for t in plan.targets:
        if any(u.name == t.name for u in units):
            continue
        fixed += linear_bytes(t.name, t.module, t.config, dtype) - state_bytes(
            {k: v for k, v in rest.items() if k in (f"{t.name}.weight", f"{t.name}.bias")}, dtype)
    return units, fixed, notes


def unit_state_names(model: nn.Module, cfg: QuantConfig) -> set[str]:
    """State names of the input embedding and of the output head where the embedding unit accounts for it."""
    from compress.quantization.embedding import _head

    embed = model.get_input_embeddings()
    names = {f"{n}.weight" for n, m in model.named_modules() if m is embed}
    head_name, head = _head(model)
    if head is not None and any(p == OUTPUT_HEAD for p in cfg.modules_to_not_convert):
        names |= {f"{head_name}.weight", f"{head_name}.bias"}
    return names


def _embedding_unit(model: nn.Module, embed: nn.Embedding, cfg: QuantConfig, formats: list[str],
                    dtype: torch.dtype) -> Unit:
    from compress.quantization.embedding import QuantEmbedding, _head

    head_name, head = _head(model)
    tied = head is not None and getattr(head, "weight", None) is embed.weight
    untied_head = head if isinstance(head, nn.Linear) and not tied else None
    name_e = next(n for n, m in model.named_modules() if m is embed)
    # the head is kept as the base config keeps it: in full precision under modules_to_not_convert (the default)
    head_kept = untied_head is not None and any(p == OUTPUT_HEAD for p in cfg.modules_to_not_convert)
    keep = state_bytes({f"{name_e}.weight": embed.weight}, dtype)
    if untied_head is not None and head_kept:
        keep += state_bytes({f"{head_name}.{k}": v for k, v in untied_head.state_dict().items()}, dtype)
    # embeddings= given fixes the format; otherwise "keep" is a candidate when target_formats allows it
    options = [Option("keep", None, keep)] if cfg.embeddings is None and "keep" in cfg.target_formats else []
    for fmt in formats:
        bits = 8 if fmt.endswith("int8") else 4
        q = QuantEmbedding(embed.num_embeddings, embed.embedding_dim, bits=bits, group_size=cfg.embedding_group_size,
                           scale_dtype=cfg.torch_scale_dtype, device="meta")
        nbytes = _module_bytes(name_e, q, dtype)
        if untied_head is not None and head_kept:  # a head the base config converts is a QuantLinear, counted apart
            h = QuantEmbedding(untied_head.out_features, untied_head.in_features, bits=bits,
                               group_size=cfg.embedding_group_size, scale_dtype=cfg.torch_scale_dtype, role="head",
                               device="meta")
            nbytes += _module_bytes(head_name, h, dtype)
        options.append(Option(fmt, None, nbytes))
    if not options:
        options = [Option("keep", None, keep)]
    return Unit(name_e, "embedding", (embed.num_embeddings, embed.embedding_dim), options)


def plan_budget(model: nn.Module, config: QuantConfig, data: Any, *, dtype: Any = None,
                errors: Optional[dict[str, dict[str, float]]] = None) -> BudgetPlan:
    """Choose each unit's format for ``config.target_size`` (see the module docstring); the model is unchanged.

    ``dtype``: what ``compress.save`` will store floats in (None: bfloat16).
    ``errors``: predicted KL per unit name and format from an earlier plan
    (``plan_errors``), to plan another size without measuring again.
    """
    start = time.perf_counter()
    if config.target_size is None:
        raise QuantError("plan_budget needs a QuantConfig with target_size set, e.g. QuantConfig(target_size='80MiB').")
    units, fixed, notes = check_budget(model, config, dtype)
    target = int(config.target_size)
    probe, scale, seqs, seq_len = None, {}, 0, 0
    if errors is None:
        probe, scale, seqs, seq_len, more = _measure(model, config, data, units)
        notes += more
    else:
        for u in units:
            for o in u.options:
                if o.format != "keep":
                    o.error = float(errors[u.name][o.format])
        if data is not None:  # planned from given errors: the guard still measures on the windows
            probe, windows = _probe(model, config, data)
            seqs, seq_len = int(windows.shape[0]), int(windows.shape[1])
            for u in units:
                if u.kind == "embedding":
                    u.hessian = _head_hessian(model, config, data, windows, notes)
    _choose(units, target - fixed)
    guard: dict[str, float] = {}
    guard_choice = None
    if probe is not None:
        guard, guard_choice, note = _guard(model, config, probe, units, target - fixed)
        notes.append(note)
    chosen = dataclasses.replace(config, target_size=None, overrides=_overrides(config, units),
                                 embeddings=_embedding_choice(config, units))
    return BudgetPlan(target, units, fixed, chosen, config.target_metric, scale, seqs, seq_len,
                      time.perf_counter() - start, notes, probe, guard, guard_choice)


def check_budget(model: nn.Module, config: QuantConfig, dtype: Any = None) -> tuple[list[Unit], int, list[str]]:
    """Raise one ``QuantError`` if ``config.target_size`` is below the smallest reachable weights file (nothing measured)."""
    from compress.io.storage import stored_dtype

    units, fixed, notes = _units_and_fixed(model, config, stored_dtype(dtype))
    target = int(config.target_size)
    least = smallest_bytes(units, fixed)
    if target < least:
        smaller = [f for f in ("int3-g128", "ternary", "embeddings-int4") if f not in config.target_formats]
        more = f" or allow smaller formats (target_formats with {' and '.join(smaller)})" if smaller else ""
        raise QuantError(
            f"target size {format_size(target)} ({target:,} bytes) is below the smallest weights file the allowed "
            f"formats ({', '.join(config.target_formats)}) reach, {format_size(least)} ({least:,} bytes); "
            f"give a target of at least {format_size(least)}{more}.")
    return units, fixed, notes


def plan_errors(plan: BudgetPlan) -> dict[str, dict[str, float]]:
    """Predicted KL per unit and format: ``plan_budget(..., errors=...)`` plans another size from them."""
    return {u.name: {o.format: o.error for o in u.options} for u in plan.units}


def _overrides(config: QuantConfig, units: list[Unit]) -> dict[str, Any]:
    out: dict[str, Any] = dict(config.overrides)  # the user's pins first: the first matching key wins
    for u in units:
        if u.kind == "linear":
            out[u.name] = u.chosen.config
    return out


def _embedding_choice(config: QuantConfig, units: list[Unit]) -> Optional[str]:
    emb = next((u for u in units if u.kind == "embedding"), None)
    return None if emb is None else EMBEDDING_CHOICES[emb.chosen.format]


def _choose(units: list[Unit], available: int) -> None:
    """Multiple-choice knapsack: one option per unit, summed bytes <= ``available``, least summed error."""
    for u in units:  # smallest first: among equal errors the smaller option wins
        u.options.sort(key=lambda o: (o.bytes, o.error))
    base = sum(u.options[0].bytes for u in units)
    spare = available - base
    if spare < 0:  # checked by the caller
        raise QuantError("internal: the budget is below the smallest reachable size.")
    step = max(1, math.ceil(spare / DP_STEPS))
    capacity = spare // step
    best = np.zeros(capacity + 1)
    picks = []
    for u in units:
        costs = [math.ceil((o.bytes - u.options[0].bytes) / step) for o in u.options]
        table = np.full((len(u.options), capacity + 1), np.inf)
        for i, (c, o) in enumerate(zip(costs, u.options)):
            if c <= capacity:
                table[i, c:] = best[: capacity + 1 - c] + o.error
        pick = np.argmin(table, axis=0)  # first minimum: the smallest option among equal errors
        best = table[pick, np.arange(capacity + 1)]
        picks.append((pick, costs))
    if not np.isfinite(best[capacity]):  # the byte quanta rounded a tight budget out of reach: the greedy instead
        _greedy(units, available)
    else:
        c = capacity
        for u, (pick, costs) in zip(reversed(units), reversed(picks)):
            u.choice = int(pick[c])
            c -= costs[u.choice]
    _spend_rest(units, available - sum(u.chosen.bytes for u in units))


def _greedy(units: list[Unit], available: int) -> None:
    """From every unit at its least error, take the step that adds the least error per byte saved until it fits."""
    for u in units:
        u.choice = min(range(len(u.options)), key=lambda i: (u.options[i].error, u.options[i].bytes))
    total = sum(u.chosen.bytes for u in units)
    while total > available:
        best, move = math.inf, None
        for u in units:
            for i, o in enumerate(u.options):
                saved = u.chosen.bytes - o.bytes
                if saved > 0:
                    rate = (o.error - u.chosen.error) / saved
                    if rate < best:
                        best, move = rate, (u, i)
        if move is None:  # cannot happen above the smallest reachable size
            raise QuantError("internal: no smaller format left while the plan is over the budget.")
        u, i = move
        total -= u.chosen.bytes - u.options[i].bytes
        u.choice = i


def _spend_rest(units: list[Unit], left: int) -> None:
    """Spend the bytes the quanta rounded away: move units to lower-error options, most error saved per byte first."""
    while True:
        best, move = 0.0, None
        for u in units:
            for i, o in enumerate(u.options):
                extra = o.bytes - u.chosen.bytes
                gain = u.chosen.error - o.error
                if gain > 0 and extra <= left:
                    rate = gain / max(extra, 1)
                    if rate > best:
                        best, move = rate, (u, i)
        if move is None:
            return
        u, i = move
        left -= u.options[i].bytes - u.chosen.bytes
        u.choice = i


# -- errors ---------------------------------------------------------------------------------------

def _measure(model: nn.Module, config: QuantConfig, data: Any, units: list[Unit]) -> tuple[Any, float, int, int, list[str]]:
    """Fill every option's predicted KL; returns (the KL probe, the scale a per format, windows, their length, notes)."""
    from compress.quantization.quantizers import fake_quantize
    from compress.sensitivity import measure_sensitivity

    linear = [u for u in units if u.kind == "linear"]
    formats = sorted({o.format for u in linear for o in u.options if o.format != "keep"},
                     key=lambda f: LINEAR_FORMATS.index(f))
    scfg = _sensitivity_config(config, formats)
    probe, windows = _probe(model, config, data)
    notes = []
    was_training = model.training
    model.eval()
    try:
        if linear:
            report = measure_sensitivity(model, windows, scfg)
            raw = {row.name: row.errors for row in report.modules}
            for u in linear:
                for o in u.options:
                    if o.format != "keep":
                        value = raw.get(u.name, {}).get(SENSITIVITY_NAMES[o.format])
                        o.raw_error = float("inf") if value is None else float(value)
        scale: dict[str, float] = {}
        if config.target_metric != "kl":
            fitted = []
            for fmt in formats:  # one scale per format: KL is not quadratic over the whole range of damage
                changes, squares = [], 0.0
                for u in linear:
                    o = next((o for o in u.options if o.format == fmt), None)
                    if o is not None and math.isfinite(o.raw_error):
                        lin = model.get_submodule(u.name)
                        changes.append((lin, fake_quantize(lin.weight, o.config)))
                        squares += o.raw_error ** 2
                kl = probe.error(0, changes)
                del changes
                scale[fmt] = kl / squares if squares > 0 else 1.0
                fitted.append(f"{fmt} {scale[fmt]:.4g} (KL {kl:.4g} with every projection {fmt})")
            notes.append(f"predicted KL = a x {config.target_metric}^2 per module, a fitted per format on "
                         f"{len(windows)} x {windows.shape[1]} calibration tokens: {'; '.join(fitted)}.")
        for u in linear:
            for o in u.options:
                if o.format != "keep":
                    o.error = o.raw_error if config.target_metric == "kl" else scale[o.format] * o.raw_error ** 2
        for u in units:
            if u.kind == "embedding":
                u.hessian = _head_hessian(model, config, data, windows, notes)
                _measure_embedding(model, config, probe, u)
    finally:
        model.train(was_training)
    return probe, scale, int(windows.shape[0]), int(windows.shape[1]), notes


def _sensitivity_config(config: QuantConfig, formats: list[str]) -> Any:
    from compress.sensitivity import SensitivityConfig

    return SensitivityConfig(metric=config.target_metric, formats=tuple(SENSITIVITY_NAMES[f] for f in formats) or
                             ("int4-g128",), importance="magnitude", sequences=config.target_sequences,
                             batch_size=config.calibration_batch_size, progress=config.progress)


def _probe(model: nn.Module, config: QuantConfig, data: Any) -> tuple[Any, torch.Tensor]:
    """A KL probe on ``target_sequences`` calibration windows (the original's outputs kept), and the windows."""
    from compress.arch import adapter_for
    from compress.output_kl import KLProbe
    from compress.sensitivity.measure import calibration_windows

    if data is None:
        raise QuantError("A size budget measures each module's error on calibration text: pass data= (token ids "
                         "[n, seq_len] or load_text(...)), or --data on the command line.")
    adapter = adapter_for(model)
    scfg = _sensitivity_config(config, [])
    windows = calibration_windows(data, scfg, adapter)
    was_training = model.training
    model.eval()
    try:
        device = adapter.embed.weight.device
        probe = KLProbe(model, adapter, [b.to(device) for b in windows.split(scfg.batch_size)])
    finally:
        model.train(was_training)
    return probe, windows


def _head_hessian(model: nn.Module, config: QuantConfig, data: Any, windows: torch.Tensor,
                  notes: list[str]) -> Optional[torch.Tensor]:
    """The head's input Hessian the table's codes will be chosen against (None under embedding_rounding="nearest").

    Made from calibration rows that hold none of the probe's ``windows`` where
    any are left: codes fitted to the very tokens they are measured on would
    look better than they are on other text.
    """
    from compress.quantization.embedding import HEAD_CALIBRATION_SEQUENCES, head_input_hessian
    from compress.sensitivity.measure import calibration_rows

    if config.embedding_rounding != "gptq":
        return None
    rows = calibration_rows(data).long()
    L = windows.shape[1]
    probed = torch.zeros(len(rows), dtype=torch.bool)
    if rows.shape[1] >= L:
        probed = torch.stack([(r.unfold(0, L, 1)[:, None, :] == windows[None].to(r.device)).all(-1).any()
                              for r in rows])
    apart = not probed.all()
    rows = (rows[~probed] if apart else rows)[:HEAD_CALIBRATION_SEQUENCES]
    notes.append(f"the embedding formats measured with codes chosen by GPTQ against the output head's inputs on "
                 f"{len(rows)} calibration sequences{' other than the windows measured' if apart else ''}, "
                 f"as quantising will choose them.")
    return head_input_hessian(model, rows, config.calibration_batch_size)


def _embedding_changes(model: nn.Module, config: QuantConfig, fmt: str, hessian: Optional[torch.Tensor] = None) -> list:
    """The embedding table (and an untied head kept with it) rounded to ``fmt``, as probe changes.

    ``hessian``: the head's input Hessian; the rows the head reads get GPTQ codes against it, as ``quantize`` does.
    """
    from compress.quantization.embedding import _head, quantize_rows

    embed = model.get_input_embeddings()
    _, head = _head(model)
    tied = head is not None and getattr(head, "weight", None) is embed.weight
    bits = 8 if fmt.endswith("int8") else 4

    def rounded(w: torch.Tensor, H: Optional[torch.Tensor]) -> torch.Tensor:
        group = w.shape[1] if bits == 8 else config.embedding_group_size
        codes, scales = quantize_rows(w, bits, group, config.torch_scale_dtype, H)
        V, D = w.shape
        return (codes.to(torch.float32).reshape(V, D // group, group) * scales.to(torch.float32)[..., None]
                ).reshape(V, D).to(w.dtype)

    head_linear = isinstance(head, nn.Linear)
    changes = [(embed, rounded(embed.weight, hessian if tied and head_linear else None))]
    if head_linear and not tied:
        changes.append((head, rounded(head.weight, hessian)))
    return changes


def _measure_embedding(model: nn.Module, config: QuantConfig, probe: Any, unit: Unit) -> None:
    for o in unit.options:
        if o.format != "keep":
            o.error = o.raw_error = probe.error(0, _embedding_changes(model, config, o.format, unit.hessian))


def _assignment_kl(model: nn.Module, config: QuantConfig, probe: Any, units: list[Unit], picks: list[int]) -> float:
    """Measured KL with every unit rounded to its picked option (round to nearest, as the errors were measured)."""
    from compress.quantization.quantizers import fake_quantize

    changes: list = []
    for u, i in zip(units, picks):
        o = u.options[i]
        if o.format == "keep":
            continue
        if u.kind == "linear":
            lin = model.get_submodule(u.name)
            changes.append((lin, fake_quantize(lin.weight, o.config)))
        else:
            changes += _embedding_changes(model, config, o.format, u.hessian)
    return probe.error(0, changes)


def _uniform_candidates(units: list[Unit], available: int) -> dict[str, list[int]]:
    """Every uniform assignment that fits: one linear format in every projection (where it has it; the
    smallest option where not) with each embedding format."""
    linear = [u for u in units if u.kind == "linear"]
    formats = [f for f in LINEAR_FORMATS if f != "keep" and any(o.format == f for u in linear for o in u.options)]
    emb = next((u for u in units if u.kind == "embedding"), None)
    out: dict[str, list[int]] = {}
    for fmt in formats:
        for e in ([o.format for o in emb.options] if emb is not None else [None]):
            picks = []
            for u in units:
                want = e if u.kind == "embedding" else fmt
                same = [i for i, o in enumerate(u.options) if o.format == want]
                picks.append(same[0] if same else min(range(len(u.options)), key=lambda i: u.options[i].bytes))
            if sum(u.options[i].bytes for u, i in zip(units, picks)) <= available:
                out[fmt + ("" if e is None else f" + {e}")] = picks
    return out


def _guard(model: nn.Module, config: QuantConfig, probe: Any, units: list[Unit], available: int
           ) -> tuple[dict[str, float], str, str]:
    """Keep the plan or the uniform assignment that fits with the least measured KL; (every KL, the kept, a note)."""
    plan = [u.choice for u in units]
    candidates = {"plan": plan, **{k: v for k, v in _uniform_candidates(units, available).items() if v != plan}}
    was_training = model.training
    model.eval()
    try:
        measured = {name: _assignment_kl(model, config, probe, units, picks) for name, picks in candidates.items()}
    finally:
        model.train(was_training)
    best = min(measured, key=lambda k: (measured[k], k != "plan"))  # a tie keeps the plan
    shown = "; ".join(f"{k} {v:.4g}" for k, v in sorted(measured.items(), key=lambda kv: kv[1]))
    if best == "plan":
        return measured, best, f"measured guard (KL on the windows, round to nearest): the plan kept ({shown})."
    for u, i in zip(units, candidates[best]):
        u.choice = i
    return measured, best, (f"measured guard (KL on the windows, round to nearest): uniform {best} measured lower than "
                      f"the plan and is used instead ({shown}).")


# -- quantising to the plan, and the report ------------------------------------------------------------

_SHORT = {"keep": "keep", "int4-g128": "g128", "int4-g64": "g64", "int4-g32": "g32", "int3-g128": "3g128",
          "int3-g64": "3g64", "int3-g32": "3g32", "ternary": "tern", "embeddings-int8": "int8", "embeddings-int4": "int4"}


@dataclass
class BudgetReport(QuantReport):
    """A ``QuantReport`` with the budget's plan: every module's format, predicted and stored bytes and KL."""

    target_bytes: int = 0
    predicted_bytes: int = 0
    stored_bytes: int = 0  # the weights file of the quantised model, from its tensors (compress.save writes this)
    smallest_bytes: int = 0
    predicted_kl: float = 0.0
    measured_kl: Optional[float] = None  # on the same calibration windows, against the original
    metric: str = "layer-error"
    kl_scale: dict[str, float] = field(default_factory=dict)
    sequences: int = 0
    seq_len: int = 0
    choices: list[dict[str, Any]] = field(default_factory=list)
    saved_bytes: Optional[int] = None  # the file compress.save wrote, when the caller records it
    guard_kl: dict[str, float] = field(default_factory=dict)  # measured KL (round to nearest) of the plan and each
    guard_choice: Optional[str] = None                         # uniform candidate that fits; which one was kept

    def errors(self) -> dict[str, dict[str, float]]:
        """Predicted KL per unit and format: ``quantize_to_size(..., errors=...)`` plans another size from them."""
        return {c["name"]: {f: o["predicted_kl"] for f, o in c["options"].items()} for c in self.choices}

    def format_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.choices:
            out[c["format"]] = out.get(c["format"], 0) + 1
        return out

    def table(self) -> str:
        lines = [super().table(), "", f"size budget {format_size(self.target_bytes)}: chosen formats "
                 f"({', '.join(f'{k} {v}' for k, v in self.format_counts().items())})"]
        lines += self.grid()
        measured = "-" if self.measured_kl is None else f"{self.measured_kl:.4g}"
        saved = "" if self.saved_bytes is None else f"; file written: {format_size(self.saved_bytes)} ({self.saved_bytes:,} B)"
        lines.append(f"weights file: predicted {format_size(self.predicted_bytes)} ({self.predicted_bytes:,} B), "
                     f"from the quantised tensors {format_size(self.stored_bytes)} ({self.stored_bytes:,} B){saved}; "
                     f"target {format_size(self.target_bytes)}, smallest reachable {format_size(self.smallest_bytes)}")
        lines.append(f"KL to the original (nats/token, {self.sequences} x {self.seq_len} calibration tokens): "
                     f"predicted {self.predicted_kl:.4g}, measured {measured}")
        return "\n".join(lines)

    def grid(self) -> list[str]:
        """One row per decoder layer, one column per projection; the embedding table on its own line."""
        rows: dict[str, dict[str, str]] = {}
        columns: list[str] = []
        other = []
        for c in self.choices:
            m = re.fullmatch(r"(.*?\.\d+)\.(.*)", c["name"])
            if c["kind"] != "linear" or m is None:
                other.append(f"  {c['name']} {list(c['shape'])}: {c['format']} ({format_size(c['bytes'])}, "
                             f"predicted KL {c['predicted_kl']:.4g})")
                continue
            rows.setdefault(m.group(1), {})[m.group(2)] = _SHORT.get(c["format"], c["format"])
            if m.group(2) not in columns:
                columns.append(m.group(2))
        if not rows:
            return other
        heads = [c.rsplit(".", 1)[-1] for c in columns]
        first = max(len(r) for r in rows)
        widths = [max(len(h), 4) for h in heads]
        out = ["  " + "layer".ljust(first) + "  " + "  ".join(h.rjust(w) for h, w in zip(heads, widths))]
        for layer, cells in rows.items():
            out.append("  " + layer.ljust(first) + "  " + "  ".join(cells.get(c, "-").rjust(w)
                                                                    for c, w in zip(columns, widths)))
        return out + other

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["format_counts"] = self.format_counts()
        return d
