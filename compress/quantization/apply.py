"""``quantize`` and ``prepare_qat``: rewrite a model's ``nn.Linear`` modules in place."""
from __future__ import annotations

import time
import warnings
from typing import Any, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from compress.arch import UnsupportedModelError, adapter_for
from compress.quantization.calibrate import quantize_sequential
from compress.quantization.config import ConfigLike, QuantConfig, QuantError, resolve_config
from compress.quantization.linear import QuantLinear
from compress.quantization.memory import release_pages
from compress.quantization.plan import Plan, Target, make_plan, set_module
from compress.quantization.qat import FakeQuantLinear
from compress.quantization.quantizers import Quantised
from compress.quantization.report import ModuleRecord, QuantReport
from compress.sizes import bytes_in_memory, count_parameters


def quantize(model: nn.Module, config: ConfigLike = None, data: Any = None, *, dtype: Any = None) -> QuantReport:
    """Quantise ``model``'s linear layers in place to packed ``QuantLinear`` modules.

    ``config``: a ``QuantConfig`` or a shorthand (``"int4"``, ``"ternary"``,
    ``"int4-gptq"``, ...); None means ``"int4"``, or, for a model prepared with
    ``prepare_qat``, "convert the fake-quantised modules as they were trained"
    (their outputs stay identical).  ``data``: calibration token ids
    ``[n, seq_len]`` (or a ``TextSplits``, whose calibration part is used),
    needed by GPTQ only.  Every targeted module is checked before any weight
    changes; one ``QuantError`` lists all that cannot be packed.
    A config with ``target_size`` chooses each module's format within that
    many bytes of weights file (``compress.quantization.budget``; needs
    ``data``; ``dtype`` is what the checkpoint will store floats in, None:
    bfloat16) and returns a ``BudgetReport``.
    """
    start = time.perf_counter()
    has_qat = any(isinstance(m, FakeQuantLinear) for m in model.modules())
    cfg = resolve_config(config)
    if cfg.target_size is not None:
        if has_qat:
            raise QuantError("A size budget chooses formats by measuring float modules, but the model holds "
                             "fake-quantised (QAT) modules; convert them with quantize(model), or budget the float model.")
        return quantize_to_size(model, cfg, data, dtype=dtype)
    plan = make_plan(model, cfg, qat_only=config is None and has_qat)
    if cfg.embeddings is not None:  # before any weight changes
        from compress.quantization.embedding import embedding_problems

        problems = embedding_problems(model, cfg.embeddings, cfg.embedding_group_size)
        if problems:
            raise QuantError("Cannot quantise the embeddings: " + "; ".join(problems) + ".")
    gptq_targets = [t for t in plan.targets if t.config.gptq and not t.from_qat]
    head_gptq = cfg.embedding_gptq and data is not None
    ids = _calibration_ids(data) if gptq_targets or head_gptq else None  # checked before any weight changes
    notes: list[str] = []
    if ids is not None and cfg.calibration_sequences is not None and len(ids) > cfg.calibration_sequences:
        if gptq_targets:
            notes.append(f"note: GPTQ calibrated on the first {cfg.calibration_sequences} of {len(ids)} calibration "
                         f"sequences (calibration_sequences).")
        ids = ids[: cfg.calibration_sequences]
    params_before, bytes_before = count_parameters(model)[0], bytes_in_memory(model)
    records: list[ModuleRecord] = []

    def convert(target: Target, quantised: Optional[Quantised]) -> QuantLinear:
        new = QuantLinear.from_linear(target.module, target.config, quantised)
        set_module(model, target.name, new)
        algorithm = "qat" if target.from_qat else "gptq" if quantised is not None else "rtn"
        label = target.config.label().replace(" gptq", "").replace(" rtn", "")
        records.append(ModuleRecord(target.name, (new.out_features, new.in_features), f"{label} {algorithm}", new.packed_bytes()))
        # Drop the float weight now (and its pages, when it is mapped from a checkpoint file):
        # peak memory stays near one copy of the model.
        release_pages(target.module.weight)
        target.module = new
        return new

    if any(t.from_qat and t.module.qat_lambda < 1 for t in plan.targets):
        notes.append("note: some fake-quantised modules had lambda < 1; the packed outputs equal lambda = 1.")
    if gptq_targets:
        rest = _run_gptq(model, plan, ids, cfg, convert, notes)
    else:
        rest = plan.targets
    for t in tqdm(rest, desc="quantise", unit="module", disable=not cfg.progress or len(rest) < 8):
        convert(t, None)
    if cfg.embeddings is not None:
        from compress.quantization.embedding import quantize_embeddings

        hessian = _head_hessian(model, cfg, data, ids, notes)
        for name, label, nbytes in quantize_embeddings(model, cfg.embeddings, cfg.embedding_group_size,
                                                       cfg.torch_scale_dtype, head_hessian=hessian):
            m = model.get_submodule(name)
            records.append(ModuleRecord(name, (m.out_features, m.in_features) if hasattr(m, "out_features")
                                        else (m.num_embeddings, m.embedding_dim), label, nbytes))
    if not plan.targets and cfg.embeddings is None:
        warnings.warn("compress.quantize found no linear module to quantise; the model is unchanged.", stacklevel=2)
    return QuantReport(
        mode="packed",
        config=(cfg.label() + (f" + {cfg.embeddings} embeddings" if cfg.embeddings else "")) if not (config is None and has_qat) else "as trained (QAT)",
        modules=records,
        skipped=plan.skipped,
        params_before=params_before,
        params_after=count_parameters(model)[0],
        bytes_before=bytes_before,
        bytes_after=bytes_in_memory(model),
        seconds=time.perf_counter() - start,
        notes=notes,
    )


def _head_hessian(model: nn.Module, cfg: QuantConfig, data: Any, ids: Optional[torch.Tensor],
                  notes: list[str]) -> Optional[torch.Tensor]:
    """The output head's input Hessian for ``embedding_rounding="gptq"`` (None: round to nearest, with a note why)."""
    from compress.quantization.embedding import HEAD_CALIBRATION_SEQUENCES, _head, head_input_hessian

    _, head = _head(model)
    if not cfg.embedding_gptq or not isinstance(head, nn.Linear):
        return None
    if ids is None:
        notes.append("note: the embedding table was rounded to nearest: pass calibration data (data=, --data) to "
                     "choose its codes by GPTQ against the output head's inputs (lower error), or set "
                     "embedding_rounding='nearest' to silence this.")
        return None
    n = min(len(ids), HEAD_CALIBRATION_SEQUENCES)
    notes.append(f"note: the embedding table's codes chosen by GPTQ against the output head's inputs on {n} "
                 f"calibration sequences.")
    return head_input_hessian(model, ids[:n], cfg.calibration_batch_size)


def quantize_to_size(model: nn.Module, config: QuantConfig, data: Any = None, *, dtype: Any = None,
                     errors: Optional[dict[str, dict[str, float]]] = None) -> QuantReport:
    """Plan (nothing changes if the budget cannot be met), quantise as planned, measure the result.

    ``errors`` (``BudgetReport.errors()`` of an earlier run on the same model):
    plan without measuring again; the report then has no measured KL.
    """
    import dataclasses

    from compress.quantization.budget import BudgetReport, format_size, plan_budget, smallest_bytes, stored_file_bytes

    plan = plan_budget(model, config, data, dtype=dtype, errors=errors)
    with warnings.catch_warnings():  # a budget that keeps every module is a plan, not a mistake
        warnings.filterwarnings("ignore", message="compress.quantize found no linear module")
        report = quantize(model, plan.config, data)
    measured = None
    if plan.probe is not None:
        was_training = model.training
        model.eval()
        try:
            measured = plan.probe.error(0, [])  # the quantised model against the original's distributions
        finally:
            model.train(was_training)
        plan.probe = None
    fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    fields["config"] = f"{config.label()} -> {report.config}"
    fields["seconds"] = report.seconds + plan.seconds
    fields["notes"] = report.notes + plan.notes
    return BudgetReport(
        **fields,
        target_bytes=plan.target_bytes,
        predicted_bytes=plan.predicted_bytes,
        stored_bytes=stored_file_bytes(model, dtype),
        smallest_bytes=smallest_bytes(plan.units, plan.fixed_bytes),
        predicted_kl=plan.predicted_error,
        measured_kl=measured,
        guard_kl=plan.guard,
        guard_choice=plan.guard_choice,
        metric=plan.metric,
        kl_scale=plan.scale,
        sequences=plan.sequences,
        seq_len=plan.seq_len,
        choices=[{"name": u.name, "kind": u.kind, "shape": list(u.shape), "format": u.chosen.format,
                  "bytes": u.chosen.bytes, "predicted_kl": u.chosen.error, "probe_error": u.chosen.raw_error,
                  "options": {o.format: {"bytes": o.bytes, "predicted_kl": o.error} for o in u.options}}
                 for u in plan.units],
    )


def prepare_qat(model: nn.Module, config: ConfigLike = "ternary", qat_lambda: float = 1.0) -> QuantReport:
    """Replace the targeted ``nn.Linear`` modules with ``FakeQuantLinear`` (same parameters, no copy).

    Train, ramping ``set_qat_lambda(model, lam)`` from 0 to 1, then call
    ``quantize(model)`` to pack them with identical outputs.
    """
    start = time.perf_counter()
    cfg = resolve_config(config)
    if cfg.gptq:
        raise QuantError("QAT trains with round-to-nearest fake quantisation; use a config without gptq.")
    plan = make_plan(model, cfg)
    params, size = count_parameters(model)[0], bytes_in_memory(model)
    records = []
    for t in plan.targets:
        if not t.from_qat:
            set_module(model, t.name, FakeQuantLinear.from_linear(t.module, t.config, qat_lambda))
        records.append(ModuleRecord(t.name, (t.module.out_features, t.module.in_features), t.config.label(), 0))
    return QuantReport(
        mode="fake-quant", config=cfg.label(), modules=records, skipped=plan.skipped,
        params_before=params, params_after=count_parameters(model)[0],
        bytes_before=size, bytes_after=bytes_in_memory(model), seconds=time.perf_counter() - start,
    )


def _run_gptq(model: nn.Module, plan: Plan, ids: torch.Tensor, cfg: QuantConfig, convert, notes: list[str]) -> list[Target]:
    """Quantise the targets inside decoder layers sequentially; return the ones left for round-to-nearest."""
    try:
        adapter = adapter_for(model)
    except UnsupportedModelError as exc:
        raise QuantError(f"GPTQ runs layer by layer and needs a supported model family: {exc}") from None
    prefixes = [adapter.layer_name(i) + "." for i in range(adapter.num_layers)]
    per_layer: list[list[Target]] = [[] for _ in prefixes]
    rest = []
    for t in plan.targets:
        i = next((i for i, p in enumerate(prefixes) if t.name.startswith(p)), None)
        (rest if i is None or t.from_qat else per_layer[i]).append(t)
    if any(t.config.gptq for t in rest):
        notes.append(f"note: {sum(t.config.gptq for t in rest)} targets outside the decoder layers used round-to-nearest.")
    was_training = model.training
    model.eval()
    try:
        quantize_sequential(adapter, per_layer, ids, convert, batch_size=cfg.calibration_batch_size,
                            true_sequential=cfg.true_sequential, progress=cfg.progress,
                            autocast_dtype=cfg.calibration_torch_dtype(next(model.parameters()).device))
    finally:
        model.train(was_training)
    return rest


def _calibration_ids(data: Any) -> torch.Tensor:
    if data is None:
        raise QuantError(
            "GPTQ needs calibration data: pass data= token ids [n, seq_len] (e.g. load_text(...).calibration), "
            "or use round-to-nearest with gptq=False."
        )
    ids = getattr(data, "calibration", data)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32) or not ids.numel():
        shape = list(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise QuantError(f"GPTQ calibration data must be a non-empty integer tensor [n, seq_len] of token ids, got {shape}.")
    return ids.long()

