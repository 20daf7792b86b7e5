"""``run``: load, check, then carry out a recipe stage by stage, resuming what a previous run finished.

Every stage starts from the checkpoint the stage before it wrote (the
original model for the first), so a run that was stopped and started again
goes through exactly the same steps as one that was not.  Recover stages
keep training checkpoints and resume from the newest; prune, quantize and
export stages are short next to training and simply start again.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from compress.arch import UnsupportedModelError, adapter_for
from compress.data import UNSEEN_TEXT, TextSplits, default_source, eval_only_sequences, evaluation_domains, load_text
from compress.errors import CompressError
from compress.eval import EvalConfig, evaluate
from compress.machine import cpu_name
from compress.models import LoadedModel, load_model
from compress.pipeline import exporting
from compress.pipeline.preflight import PreflightReport, is_qat, preflight
from compress.pipeline.recipe import Recipe, load_recipe
from compress.pipeline.report import RunReport
from compress.io.atomic import write_json
from compress.io.fingerprint import model_fingerprint
from compress.pipeline.rundir import RUN_FILE, RunDir, fingerprint, read_json
from compress.pipeline.stages import Export, Prune, Quantize, Recover, Stage, StageContext, stage_options
from compress.io.outputs import check_location
from compress.sizes import bytes_on_disk, count_parameters

Log = Callable[[str], None]
ORIGINAL_FILE = "original.json"


@dataclass
class _Run:
    recipe: Recipe
    dirs: RunDir
    original: nn.Module
    tokenizer: Any
    splits: TextSplits
    device: torch.device
    log: Log
    fingerprints: list[str]
    eval_key: str
    data_info: dict[str, Any]
    progress: bool
    domains: dict[str, torch.Tensor]
    calibration_domain: str


def run(
    model: Any = None,
    recipe: Any = "default",
    output_dir: str | os.PathLike | None = None,
    *,
    tokenizer: Any = None,
    data: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Log | None = print,
) -> RunReport:
    """Carry out ``recipe`` on ``model`` and write checkpoints, exports and a report under ``output_dir``.

    ``model``: None (the recipe's model), a built-in name, a path, or a model
    object (then ``tokenizer`` too).  ``recipe``: a ``Recipe``, a mapping, a
    YAML file, a built-in recipe name (``default``, ``small-fast``,
    ``smallest``) or a list of stages.  ``data``: text files overriding the
    recipe's, or a ``TextSplits``.  ``output_dir`` defaults to
    ``runs/<recipe name>``.  Running the same call again skips the stages that
    are done and resumes an interrupted recover stage; a directory holding a
    run of another model or text is replaced only with ``overwrite=True``.
    """
    start = time.perf_counter()
    log = log or (lambda _: None)
    recipe = _resolve(model, recipe, data, progress)
    dirs = RunDir(output_dir if output_dir is not None else Path("runs") / recipe.name)
    log(f"compress-lm run: recipe {recipe.name!r} on {recipe.model if not isinstance(model, nn.Module) else type(model).__name__}"
        f" -> {dirs.root}")
    dirs.check_location()  # a file, under a file or not writable: say so before loading anything
    original, tokenizer, name, splits, domains, device, check = _load_and_check(model, recipe, tokenizer, data)
    log(check.summary())
    check.raise_if_problems()
    # every stage's checkpoint and every export, each at most the original's size (hf exports of it included)
    check_location(dirs.root, bytes_on_disk(original) * (len(recipe.stages) + sum(
        len(s.formats) for s in recipe.stages if isinstance(s, Export))))

    base = _base(recipe, original, splits, name, builtin_text=recipe.data is None and not isinstance(data, TextSplits))
    base["data"]["label"] = next(iter(domains))
    dirs.prepare(base, overwrite, _input_paths(model, recipe))
    write_json(dirs.root / RUN_FILE, {"base_fingerprint": base["fingerprint"], **base, "recipe": recipe.to_dict()})
    fingerprints = _stage_fingerprints(recipe, base["fingerprint"])
    keep = [d for i, s in enumerate(recipe.stages) for d in (dirs.stage_dir(i, s.kind), dirs.train_dir(i, s.kind))]
    for gone in dirs.remove_stale(keep):
        log(f"removed {gone}: it belongs to no stage of this recipe")
    eval_key = fingerprint({"eval": dataclasses.asdict(recipe.eval), "data": splits.fingerprint, "reference": base["model"]["fingerprint"],
                            "domains": {d: hashlib.sha256(t[: recipe.eval.sequences].numpy().tobytes()).hexdigest()
                                        for d, t in domains.items()}})
    r = _Run(recipe, dirs, original, tokenizer, splits, device, log, fingerprints, eval_key, base["data"], progress,
             domains, next(iter(domains)))

    original_rec = _original_record(r)
    records: list[dict[str, Any]] = []
    redo = False  # once a stage runs, every later one runs too: it must start from what this one wrote
    for i in range(len(recipe.stages)):
        records.append(_stage(r, i, redo))
        redo = redo or not records[-1].get("skipped", False)
    for i, rec in enumerate(records):  # stages done earlier whose evaluation was cut short or measured differently
        if rec["kind"] != "export" and rec.get("eval_key") != eval_key:
            records[i] = _evaluate_saved(r, i, rec)

    report = _report(r, base, check, original_rec, records, time.perf_counter() - start)
    written = report.write(dirs.root)
    log("\n" + report.table())
    log(f"report: {written[0]}\ncharts: " + ", ".join(str(p) for p in written[2:]))
    if report.final_checkpoint:
        log(f"final checkpoint: {report.final_checkpoint} (compress.load opens it)")
    for e in report.exports:
        log(f"export {e['format']}: {e['path']}")
    return report


def _input_paths(model: Any, recipe: Recipe) -> tuple[Path, ...]:
    """The local model directory or file the run reads: a replaced run directory must not hold it."""
    name = model if isinstance(model, (str, os.PathLike)) else recipe.model if model is None else None
    path = Path(str(name)).expanduser() if name else None
    return (path,) if path is not None and path.exists() else ()


def _report(r: _Run, base: dict[str, Any], check: PreflightReport, original: dict[str, Any],
            records: list[dict[str, Any]], seconds: float) -> RunReport:
    return RunReport(
        recipe=r.recipe.to_dict(),
        output_dir=str(r.dirs.root),
        model=base["model"],
        data=base["data"],
        machine=_machine(r.device),
        original=original,
        stages=records,
        final_checkpoint=next((rec["checkpoint"] for rec in reversed(records) if rec.get("checkpoint")), None),
        exports=[e for rec in records for e in (rec.get("result") or {}).get("exports", [])],
        preflight={"notes": check.notes, "memory": dataclasses.asdict(check.memory) if check.memory else None},
        seconds=seconds,
    )


def check(model: Any = None, recipe: Any = "default", *, tokenizer: Any = None, data: Any = None) -> PreflightReport:
    """Load the model and text and run only the pre-flight check (``compress-lm run --check``); nothing is written."""
    recipe = _resolve(model, recipe, data, progress=False)
    return _load_and_check(model, recipe, tokenizer, data)[-1]


# -- inputs --------------------------------------------------------------------

def _resolve(model: Any, recipe: Any, data: Any, progress: bool) -> Recipe:
    """The recipe with the call's model and text in place of its own."""
    recipe = load_recipe(recipe)
    if isinstance(model, (str, os.PathLike)):
        recipe = dataclasses.replace(recipe, model=str(model))
    if data is not None and not isinstance(data, TextSplits):
        recipe = dataclasses.replace(recipe, data=data)
    return recipe if progress else _quiet(recipe)


def _load_and_check(model: Any, recipe: Recipe, tokenizer: Any, data: Any) -> tuple:
    from compress.machine import check_device

    if recipe.device:
        device = check_device(recipe.device, "the recipe's device")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    original, tokenizer, name = _original(model, tokenizer, recipe, device)
    if isinstance(data, TextSplits):
        splits = data
        domains = {"calibration text": data.eval, UNSEEN_TEXT: eval_only_sequences(UNSEEN_TEXT, tokenizer, recipe.text)}
        if recipe.eval.data:
            domains["your text"] = eval_only_sequences(list(recipe.eval.data), tokenizer, recipe.text)
    else:
        source = list(recipe.data) if recipe.data is not None else default_source(original)
        splits = load_text(source, tokenizer, recipe.text, model=original, generate=recipe.generate)
        domains = evaluation_domains(tokenizer, source, recipe.text, splits=splits,
                                     extra=list(recipe.eval.data) if recipe.eval.data else None)
    return original, tokenizer, name, splits, domains, device, preflight(recipe, original, splits, device)


def _quiet(recipe: Recipe) -> Recipe:
    stages = []
    for s in recipe.stages:
        if isinstance(s, (Prune, Recover, Quantize)):
            config = dataclasses.replace(s.config, progress=False)
            if isinstance(s, Prune) and s.config.recover is not None:  # incremental pruning's training
                config = dataclasses.replace(config, recover=dataclasses.replace(s.config.recover, progress=False))
            s = dataclasses.replace(s, config=config)
        stages.append(s)
    return dataclasses.replace(recipe, stages=tuple(stages), generate=dataclasses.replace(recipe.generate, progress=False))


def _original(model: Any, tokenizer: Any, recipe: Recipe, device: torch.device) -> tuple[nn.Module, Any, str]:
    """The uncompressed model (reference and teacher), its tokenizer and a name for reports."""
    if model is None or isinstance(model, (str, os.PathLike)):
        name = recipe.model
        loaded = load_model(name, dtype=getattr(torch, recipe.dtype), device=device)
        return loaded.model, loaded.tokenizer, name
    if isinstance(model, (LoadedModel, tuple)) and len(model) == 2 and isinstance(model[0], nn.Module):
        model, tokenizer = model[0], tokenizer if tokenizer is not None else model[1]
    if not isinstance(model, nn.Module):
        raise CompressError(f"run() takes a model name, a path or a model object, got {type(model).__name__}.")
    if tokenizer is None:
        raise CompressError("run() was given a model object without its tokenizer; pass tokenizer= as well.")
    return model.to(device).eval(), tokenizer, getattr(model.config, "_name_or_path", "") or type(model).__name__


def _base(recipe: Recipe, original: nn.Module, splits: TextSplits, name: str, builtin_text: bool) -> dict[str, Any]:
    """What every stage's fingerprint starts from: the model's weights and the text's tokens."""
    try:
        family = adapter_for(original).spec.family
    except UnsupportedModelError:
        family = None
    calibration = hashlib.sha256(splits.calibration.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()
    model = {"name": name, "fingerprint": model_fingerprint(original), "family": family, "dtype": recipe.dtype,
             "class": type(original).__name__}
    data = {**splits.describe(), "builtin": builtin_text, "calibration_sha256": calibration,
            "text_config": dataclasses.asdict(splits.config)}
    return {"fingerprint": fingerprint([model["fingerprint"], splits.fingerprint, recipe.dtype]), "model": model, "data": data}


def _stage_fingerprints(recipe: Recipe, base: str) -> list[str]:
    """Stage i's fingerprint covers the model, the text and every stage up to i (how each quantize stage trains)."""
    chain = []
    out = []
    for i, s in enumerate(recipe.stages):
        chain.append({"stage": stage_options(s, for_fingerprint=True), "qat": is_qat(recipe.stages, i)})
        out.append(fingerprint([base, chain]))
    return out


def _machine(device: torch.device) -> dict[str, Any]:
    cpu = cpu_name()
    info = {"device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["summary"] = info.get("gpu") or f"{cpu}, {info['cpu_count']} cores, {info['torch_threads']} torch threads"
    if hasattr(os, "getloadavg"):  # speeds measured on a busy machine say so
        info["load_average"] = [round(x, 1) for x in os.getloadavg()]
        info["summary"] += f" (load average {info['load_average'][1]} over the last 5 minutes)"
    return info


# -- stages --------------------------------------------------------------------

def _stage(r: _Run, i: int, redo: bool) -> dict[str, Any]:
    stage = r.recipe.stages[i]
    n, fp = len(r.recipe.stages), r.fingerprints[i]
    done = None if redo else r.dirs.done(i, stage.kind, fp)
    if done is not None and all(Path(e["path"]).exists() for e in (done.get("result") or {}).get("exports", [])):
        r.log(f"[{i + 1}/{n}] {stage.label()}: done in an earlier run, skipped ({r.dirs.stage_dir(i, stage.kind)})")
        return {**done, "skipped": True}
    r.log(f"[{i + 1}/{n}] {stage.label()}")
    model = _stage_input(r, i)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"index": i + 1, "kind": stage.kind, "label": stage.label(), "fingerprint": fp,
                              "options": stage_options(stage)[stage.kind], "qat": is_qat(r.recipe.stages, i)}
    if isinstance(stage, Export):
        exports = [exporting.export_model(model, r.tokenizer, r.dirs.export_dir(f), f, verify=stage.verify,
                                          gguf_type=stage.gguf_type if f == "gguf" else None, dtype=stage.dtype)
                   for f in stage.formats]
        for e in exports:
            r.log(f"    {e['format']}: {e['path']}" + (f" ({e['check']})" if e.get("check") else ""))
        record.update(result={"exports": exports}, seconds=time.perf_counter() - t0,
                      summary="\n".join(e["summary"] for e in exports))
        r.dirs.write_record(i, stage.kind, record)
        return record
    result, summary = _apply(r, i, stage, model)
    record.update(result=result, summary=summary, seconds=time.perf_counter() - t0)
    _note_run(model, r, i)
    path = _save(model, r, i, stage)
    record.update(checkpoint=str(path), size=_size(model, _stored_dtype(r)))
    r.dirs.write_record(i, stage.kind, record)  # the stage is done from here on, evaluated or not
    if isinstance(stage, Recover):
        shutil.rmtree(r.dirs.train_dir(i, stage.kind) / "checkpoints", ignore_errors=True)  # only a resume needs them
    record = _with_eval(r, record, model)
    r.dirs.write_record(i, stage.kind, record)
    r.log(f"    {_one_line(record)}")
    del model
    gc.collect()
    return record


def _stage_input(r: _Run, i: int) -> nn.Module:
    """The model stage ``i`` starts from: the last checkpoint before it, or a copy of the original."""
    from compress.io import load

    for j in range(i - 1, -1, -1):
        prev = r.recipe.stages[j]
        if isinstance(prev, Export):
            continue
        model = load(r.dirs.stage_dir(j, prev.kind), device=r.device).model
        if is_qat(r.recipe.stages, j):  # saved in float; the fake quantisation is put back, as it was trained
            from compress.quantization import prepare_qat

            prepare_qat(model, prev.config)
        return model
    return copy.deepcopy(r.original)


def _apply(r: _Run, i: int, stage: Stage, model: nn.Module) -> tuple[dict[str, Any], str]:
    """Carry out one model-changing stage in place; its report as a dict and as text."""
    export = next((s for s in r.recipe.stages[i + 1:] if isinstance(s, Export)), None)
    context = StageContext(splits=r.splits, original=r.original, qat=is_qat(r.recipe.stages, i),
                           train_dir=lambda: r.dirs.train_state(i, stage.kind, r.fingerprints[i]), log=r.log,
                           stored_dtype=getattr(export, "dtype", None))
    return stage.apply(model, context)


def _note_run(model: nn.Module, r: _Run, i: int) -> None:
    """Put the run, the text's fingerprints and the calibration hash into the checkpoint's manifest."""
    history = list(getattr(model.config, "compress_methods", None) or [])
    history.append({"step": "run", "recipe": r.recipe.name, "stage": i + 1, "fingerprint": r.fingerprints[i],
                    "data_fingerprint": r.data_info["fingerprint"], "calibration_sha256": r.data_info["calibration_sha256"]})
    model.config.compress_methods = history


def _save(model: nn.Module, r: _Run, i: int, stage: Stage) -> Path:
    from compress.io import save

    # float32: a resumed run continues from exactly the weights the stage left (the final export picks its own dtype)
    return save(model, r.dirs.stage_dir(i, stage.kind), r.tokenizer, overwrite=True, dtype="float32")


# -- measuring -----------------------------------------------------------------

def _size(model: nn.Module, dtype: str | None) -> dict[str, Any]:
    """Parameters, bytes of the weights file ``compress.save(model, dtype=dtype)`` writes (the exports' dtype; the
    stage checkpoints kept for resuming are float32) and bits per weight, overall and inside the layers."""
    from compress.io.storage import is_cast, packed_names, stored_dtype
    from compress.quantization.budget import stored_file_bytes

    total, non_emb = count_parameters(model)
    stored = stored_dtype(dtype)
    disk = stored_file_bytes(model, stored)
    size = {"params": total, "params_non_embedding": non_emb, "disk_bytes": disk,
            "stored_dtype": str(stored).removeprefix("torch."),
            "bits_per_weight": 8 * disk / total if total else None, "bits_per_weight_layers": None}
    try:
        layers = adapter_for(model).layers
    except UnsupportedModelError:
        return size
    n = sum(p.numel() for p in layers.parameters()) + sum(
        int(m.logical_numel()) for m in layers.modules() if callable(getattr(m, "logical_numel", None)))
    keep = packed_names(layers)
    nbytes = sum(t.numel() * (stored.itemsize if is_cast(k, t, keep) else t.element_size())
                 for k, t in layers.state_dict().items())
    size["bits_per_weight_layers"] = 8 * nbytes / n if n else None
    return size


def _stored_dtype(r: _Run) -> str | None:
    """The dtype the run's weights are shipped in: its first export stage's (None: bfloat16, the default)."""
    return next((s.dtype for s in r.recipe.stages if isinstance(s, Export)), None)


def _evaluate(r: _Run, model: nn.Module, name: str, reference: nn.Module | None) -> dict[str, Any]:
    settings = r.recipe.eval
    config = EvalConfig(batch_size=settings.batch_size, max_sequences=settings.sequences,
                        mask_token_id=getattr(r.tokenizer, "mask_token_id", None),
                                        progress=r.progress)
    was_training = model.training
    model.eval()
    per_domain = {}
    for domain, seqs in r.domains.items():
        rep = evaluate(model, seqs, reference, config, name=name, reference_name="original")
        m = rep.model
        per_domain[domain] = {"perplexity": m.perplexity, "loss": m.loss, "kl": rep.kl_to_reference, "top1": rep.top1_agreement,
                              "embedding_cosine": rep.embedding_cosine, "tokens_per_second": m.tokens_per_second,
                              "bytes_in_memory": m.bytes_in_memory, "objective": rep.objective, "sequences": rep.sequences,
                              "seq_len": rep.seq_len, "device": rep.device}
    model.train(was_training)
    # the calibration domain's figures stay at the top level (as before); every domain's under "domains"
    unseen = UNSEEN_TEXT if UNSEEN_TEXT in per_domain else None
    return {**per_domain[r.calibration_domain], "domain": r.calibration_domain, "domains": per_domain, "unseen": unseen}


def _with_eval(r: _Run, record: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    t0 = time.perf_counter()
    ev = _evaluate(r, model, record["label"], r.original)
    ev["seconds"] = time.perf_counter() - t0
    return {**record, "eval": ev, "eval_key": r.eval_key}


def _evaluate_saved(r: _Run, i: int, record: dict[str, Any]) -> dict[str, Any]:
    from compress.io import load

    stage = r.recipe.stages[i]
    r.log(f"evaluating stage {i + 1} ({stage.kind}) from its checkpoint")
    model = load(r.dirs.stage_dir(i, stage.kind), device=r.device).model
    if record.get("qat"):
        from compress.quantization import prepare_qat

        prepare_qat(model, stage.config)
    record = _with_eval(r, record, model)
    r.dirs.write_record(i, stage.kind, {k: v for k, v in record.items() if k != "skipped"})
    return record


def _original_record(r: _Run) -> dict[str, Any]:
    """Size and held-out numbers of the uncompressed model, measured once per run directory and text."""
    path = r.dirs.root / ORIGINAL_FILE
    saved = read_json(path)
    if saved is not None and saved.get("eval_key") == r.eval_key:
        saved["size"] = _size(r.original, _stored_dtype(r))  # cheap, and the exports' dtype may have changed
        return saved
    r.log("measuring the original model")
    t0 = time.perf_counter()
    record = {"size": _size(r.original, _stored_dtype(r)), "eval": _evaluate(r, r.original, "original", None), "eval_key": r.eval_key}
    record["eval"]["seconds"] = time.perf_counter() - t0
    r.log(f"    {_one_line(record)}")
    write_json(path, record)
    return record


def _one_line(record: dict[str, Any]) -> str:
    ev, size = record.get("eval") or {}, record.get("size") or {}
    parts = [f"{size.get('params', 0) / 1e6:.2f} M params", f"{(size.get('disk_bytes') or 0) / 2**20:,.1f} MiB"]
    if ev.get("perplexity") is not None:
        parts.append(f"perplexity {ev['perplexity']:.2f}")
    if ev.get("kl") is not None:
        parts.append(f"KL {ev['kl']:.4f}, top-1 {ev['top1']:.3f}")
    return ", ".join(parts)
