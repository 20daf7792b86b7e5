"""The pre-flight check: the whole recipe against the model, before any calibration or training.

It looks at the order of the stages, the model's structure (a supported
family, GQA head groups, tied embeddings), every layer's shape against the
packed formats of the quantize stage, both as the model is and at the
narrowest widths a prune stage may leave (MLP widths are multiples of
``round_to``; attention keeps whole kv groups), the export formats against
the predicted final model, the text, and the memory the run will need.  It
raises one ``PreflightError`` that lists every problem it found.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compress.arch import Adapter, UnsupportedModelError, adapter_for, is_causal_lm
from compress.data import TextSplits
from compress.errors import CompressError
from compress.pipeline import exporting
from compress.pipeline.memory import MemoryEstimate, estimate, gib
from compress.pipeline.recipe import Recipe
from compress.pipeline.stages import Export, Prune, Quantize, Recover, Stage
from compress.pruning.groups import layer_groups
from compress.pruning.problems import prune_problems
from compress.quantization.config import OUTPUT_HEAD, QuantConfig, QuantError
from compress.quantization.linear import QuantLinear
from compress.quantization.plan import make_plan, set_module


class PreflightError(CompressError):
    """The recipe cannot run on this model; the message lists every reason."""


@dataclass
class PreflightReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory: MemoryEstimate | None = None

    def summary(self) -> str:
        lines = ["pre-flight check: " + ("passed" if not self.problems else f"{len(self.problems)} problem(s)")]
        m = self.memory
        if m is not None:
            free = "unknown" if m.available is None else gib(m.available)
            lines.append(f"  memory: about {gib(m.peak)} at the peak ({m.peak_stage}); {free} available on {m.device}")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_problems(self) -> None:
        if self.problems:
            listed = " ".join(f"({i}) {p.rstrip('.')}." for i, p in enumerate(self.problems, 1))
            raise PreflightError(
                f"The recipe cannot run as written; the pre-flight check found {len(self.problems)} "
                f"problem(s), and no stage has started: {listed}"
            )


NARROWEST = ", at the narrowest widths pruning may leave (MLP widths multiples of round_to, one kv group per layer)"


def stage_name(i: int, stage: Stage) -> str:
    return f"stage {i + 1} ({stage.kind})"


def is_qat(stages: tuple[Stage, ...], i: int) -> bool:
    """A quantize stage directly followed by a recover stage trains with fake quantisation."""
    return isinstance(stages[i], Quantize) and i + 1 < len(stages) and isinstance(stages[i + 1], Recover)


def preflight(recipe: Recipe, model: nn.Module, splits: TextSplits, device: torch.device) -> PreflightReport:
    """Check ``recipe`` against ``model`` and the text; raise ``PreflightError`` listing every problem."""
    report = PreflightReport()
    problems, notes = report.problems, report.notes
    _check_order(recipe.stages, problems)
    try:
        adapter: Adapter | None = adapter_for(model)
    except UnsupportedModelError as err:
        problems.append(str(err))
        adapter = None
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if isinstance(context, int) and splits.config.seq_len > context:
        problems.append(f"the text's seq_len {splits.config.seq_len} is longer than the model's context of {context} "
                        f"positions (max_position_embeddings); set text seq_len to at most {context}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        problems.append("The recipe asks for device 'cuda' but this machine has no CUDA GPU; use device: cpu.")

    round_to: int | None = None  # the widths a prune stage may leave: multiples of this
    # The final model's possible shapes, on the meta device: as the model is, and as narrow as pruning may make it.
    predicted: list[tuple[str, nn.Module]] = [("", _meta_copy(model, adapter))]
    for i, stage in enumerate(recipe.stages):
        where = stage_name(i, stage)
        if isinstance(stage, Prune) and adapter is not None:
            if _check_prune(stage, adapter, model, splits.config.seq_len, where, problems):
                round_to = stage.config.round_to if round_to is None else math.gcd(round_to, stage.config.round_to)
                predicted = predicted[:1] + [(NARROWEST, _narrowest(model, adapter, round_to))]
        elif isinstance(stage, Recover) and not is_causal_lm(model):
            problems.append(f"{where}: recovery distils next-token predictions, and this model is an encoder; drop the stage.")
        elif isinstance(stage, Recover) and stage.config.hidden_weight:
            dropping = [stage_name(j, s) for j, s in enumerate(recipe.stages[:i])
                        if isinstance(s, Prune) and s.config.drop_layers]
            if dropping:
                problems.append(f"{where} matches the original's hidden states layer by layer (hidden_weight), but "
                                f"{dropping[0]} drops layers; set hidden_weight: 0 or drop_layers: 0.")
        elif isinstance(stage, Quantize) and not any(isinstance(s, Quantize) for s in recipe.stages[:i]):
            qat = is_qat(recipe.stages, i)
            if qat and stage.config.gptq:
                problems.append(
                    f"{where} uses GPTQ and is followed by a recover stage, which trains with round-to-nearest fake "
                    f"quantisation (QAT); drop gptq, or put an export (or nothing) after the quantize stage."
                )
            if stage.config.target_size is not None:
                if qat:
                    problems.append(
                        f"{where} chooses formats within target_size and is followed by a recover stage, which trains "
                        f"one format with fake quantisation (QAT); drop target_size, or the recover stage after it."
                    )
                exports = [s for s in recipe.stages[i + 1:] if isinstance(s, Export)]
                predicted = _check_budget_formats(stage.config, predicted, round_to, exports, where, problems, notes)
                continue
            predicted = _check_quantize(stage.config, predicted, round_to, where, problems)
            _note_tied(stage.config, adapter, notes)
            wanted = stage.config.calibration_sequences  # None: all of them
            if stage.config.gptq and wanted is not None and wanted > len(splits.calibration):
                notes.append(f"{where}: GPTQ asks for {wanted} calibration sequences; the text "
                             f"gives {len(splits.calibration)}, and all of them are used.")
        elif isinstance(stage, Export):
            _check_export(stage, predicted, where, problems, notes)

    if len(splits.eval) < recipe.eval.sequences:
        notes.append(f"the text gives {len(splits.eval)} held-out sequences, fewer than eval sequences "
                     f"{recipe.eval.sequences}; every stage is measured on those {len(splits.eval)}.")
    report.memory = _check_memory(recipe, model, splits.config.seq_len, device, problems, notes)
    return report


# -- order ---------------------------------------------------------------------

def _check_order(stages: tuple[Stage, ...], problems: list[str]) -> None:
    quantize = [i for i, s in enumerate(stages) if isinstance(s, Quantize)]
    exports = [i for i, s in enumerate(stages) if isinstance(s, Export)]
    last_model_stage = max((i for i, s in enumerate(stages) if not isinstance(s, Export)), default=-1)
    if exports and min(exports) < last_model_stage:
        problems.append(
            f"{stage_name(min(exports), stages[min(exports)])} comes before {stage_name(last_model_stage, stages[last_model_stage])}; "
            f"exports write the final model, so put them at the end."
        )
    if len(quantize) > 1:
        problems.append(
            f"stages {', '.join(str(i + 1) for i in quantize)} all quantise, but a quantised model cannot be quantised "
            f"again; keep one quantize stage (per-module formats go in its overrides)."
        )
    if quantize:
        q = quantize[0]
        for i in range(q + 1, len(stages)):
            s = stages[i]
            if isinstance(s, Prune):
                problems.append(f"{stage_name(i, s)} prunes after {stage_name(q, stages[q])} quantised the model; "
                                f"prune first, then quantise.")
            elif isinstance(s, Recover) and i != q + 1:
                problems.append(
                    f"{stage_name(i, s)} trains after {stage_name(q, stages[q])} was packed (only the recover stage "
                    f"directly after a quantize stage trains it, as QAT); merge the recover stages into one."
                )


# -- prune ---------------------------------------------------------------------

def _check_prune(stage: Prune, adapter: Adapter, model: nn.Module, seq_len: int, where: str, problems: list[str]) -> bool:
    """Collect the prune stage's problems from pruning itself; False when the layers' shapes cannot be read."""
    found, readable = prune_problems(model, stage.config, seq_len=seq_len, adapter=adapter)
    problems.extend(f"{where}: {p}" for p in found)
    return readable


# -- quantize ------------------------------------------------------------------

def _check_quantize(cfg: QuantConfig, predicted: list[tuple[str, nn.Module]], round_to: int | None, where: str,
                    problems: list[str]) -> list[tuple[str, nn.Module]]:
    """Validate every predicted shape; return the predicted models with QuantLinear skeletons in place."""
    seen: set[str] = set()
    quantised = []
    for label, skeleton in predicted:
        try:
            plan = make_plan(skeleton, cfg)
        except QuantError as err:
            message = str(err)
            if message not in seen:
                seen.add(message)
                hint = (f" With pruning, a round_to (now {round_to}) that is a multiple of the packing unit avoids this"
                        if label else "")
                problems.append(f"{where} ({cfg.label()}){label}: {message}{hint}")
            continue
        for t in plan.targets:
            set_module(skeleton, t.name, _predicted_quant_linear(t.module, t.config))
        if cfg.embeddings is not None:
            from compress.quantization.embedding import embedding_problems, predicted_embeddings

            listed = embedding_problems(skeleton, cfg.embeddings, cfg.embedding_group_size)
            for p in listed:
                if p not in seen:
                    seen.add(p)
                    problems.append(f"{where} (embeddings {cfg.embeddings}){label}: {p}")
            if listed:
                continue
            predicted_embeddings(skeleton, cfg.embeddings, cfg.embedding_group_size, cfg.torch_scale_dtype)
        quantised.append((label, skeleton))
    return quantised


def _check_budget_formats(cfg: QuantConfig, predicted: list[tuple[str, nn.Module]], round_to: int | None,
                          exports: list[Export], where: str, problems: list[str],
                          notes: list[str]) -> list[tuple[str, nn.Module]]:
    """A size budget may choose any of ``target_formats`` per module: each must pack and be stored by every export.

    Returns no predicted model: which format each module gets is known only after the budget has measured them,
    so the exports after it were checked here, one candidate format at a time.
    """
    import copy
    import dataclasses

    from compress.quantization.budget import EMBEDDING_CHOICES, SENSITIVITY_NAMES
    from compress.sensitivity.config import FORMATS

    base = dataclasses.replace(cfg, target_size=None)
    for fmt in cfg.target_formats:
        if fmt == "keep":
            continue
        if fmt in EMBEDDING_CHOICES:
            cand = dataclasses.replace(base, embeddings=EMBEDDING_CHOICES[fmt], overrides={".*": None})
        else:
            fields = FORMATS[SENSITIVITY_NAMES[fmt]]
            # switching method drops the other method's fields (GPTQ is int4-only)
            chosen = {k: v for k, v in fields.items() if k in ("method", "group_size")}
            if fields["method"] == "int4":  # int4 and int3 candidates: the code width too, whatever the base's
                chosen["bits"] = fields.get("bits", 4)
            cand = dataclasses.replace(base, **chosen)
        found: list[str] = []
        skeletons = _check_quantize(cand, [(label, copy.deepcopy(m)) for label, m in predicted], round_to, where, found)
        for export in exports:
            _check_export(export, skeletons, where, found, notes)
        if found:
            first = found[0].split(": ", 1)[-1]
            problems.append(f"{where}: target_formats allows {fmt}, which {first.rstrip('.')}; drop {fmt} from "
                            f"target_formats (or the export).")
    return []


def _predicted_quant_linear(lin: nn.Module, cfg: QuantConfig) -> QuantLinear:
    """A meta ``QuantLinear`` as ``cfg`` will make it; zero points get real values (whole codes or not), which exporters read."""
    q = QuantLinear.empty_for(lin, cfg, device="meta")
    if q.zeros is not None:
        q.zeros = torch.full(tuple(q.zeros.shape), 8.0 if cfg.zero_point == "integer" else 7.5, dtype=q.zeros.dtype)
    return q


def _note_tied(cfg: QuantConfig, adapter: Adapter | None, notes: list[str]) -> None:
    if adapter is not None and adapter.tied_embeddings and OUTPUT_HEAD not in cfg.modules_to_not_convert \
            and cfg.embeddings is None:
        notes.append("the output head is tied to the input embeddings, so it stays in full precision "
                     "(quantising it would untie them and store the matrix twice).")


# -- export --------------------------------------------------------------------

def _check_export(stage: Export, predicted: list[tuple[str, nn.Module]], where: str, problems: list[str],
                  notes: list[str]) -> None:
    formats = exporting.available_formats()
    for fmt in stage.formats:
        if fmt not in formats:
            problems.append(f"{where}: unknown export format {fmt!r}; this version writes {', '.join(formats)}.")
            continue
        found: list[str] = []
        for label, skeleton in predicted:
            try:
                listed = exporting.export_problems(skeleton, fmt, stage.gguf_type if fmt == "gguf" else None)
            except NotImplementedError:  # the exporter reads tensor values, which a meta model has not
                notes.append(f"{where}: the {fmt} exporter could not be asked before the run; it checks the model "
                             f"when the stage starts.")
                break
            for p in listed:
                if p not in found:
                    found.append(p)
                    problems.append(f"{where} as {fmt}{label}: {p}")


# -- memory --------------------------------------------------------------------

def _check_memory(recipe: Recipe, model: nn.Module, seq_len: int, device: torch.device, problems: list[str],
                  notes: list[str]) -> MemoryEstimate:
    facts: list[tuple[str, dict[str, Any]]] = []
    for i, s in enumerate(recipe.stages):
        if isinstance(s, Prune):
            c = s.config
            facts.append((stage_name(i, s), {"kind": "prune", "batch_size": c.batch_size, "gradients": c.importance == "taylor",
                                             "seq_len": c.calib_seq_len or seq_len, "refit": c.refit}))
        elif isinstance(s, Recover):
            c = s.config
            facts.append((stage_name(i, s), {"kind": "recover", "batch_size": c.batch_size,
                                             "trainable_fraction": 0.05 if c.lora_rank else 1.0}))
        elif isinstance(s, Quantize):
            facts.append((stage_name(i, s), {"kind": "quantize", "batch_size": s.config.calibration_batch_size}))
    est = estimate(model, facts, recipe.eval.batch_size, seq_len, device)
    if est.available is not None and est.peak > est.available:
        problems.append(
            f"the run needs about {gib(est.peak)} at its peak ({est.peak_stage}) and {est.device} has {gib(est.available)} "
            f"available; lower batch_size or seq_len, train LoRA adapters (lora_rank), or use a larger machine."
        )
    elif est.available is not None and est.peak > 0.8 * est.available:
        notes.append(f"the run needs about {gib(est.peak)} at its peak ({est.peak_stage}), close to the "
                     f"{gib(est.available)} available.")
    return est


# -- predicted shapes ----------------------------------------------------------

def _meta_copy(model: nn.Module, adapter: Adapter | None) -> nn.Module:
    """The model's structure with every tensor on the meta device: shapes, module types and ties, no data."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        skeleton = type(model)(copy.deepcopy(model.config))
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(skeleton, "tie_weights"):
        skeleton.tie_weights()
    if adapter is not None:
        widths = adapter.describe()
        target = adapter_for(skeleton)
        for i in range(target.num_layers):
            target.resize_layer(i, widths["num_heads"][i], widths["num_kv_heads"][i], widths["mlp_width"][i])
    for name, module in model.named_modules():  # an input that is quantised already
        if isinstance(module, QuantLinear):
            spec = dict(module.describe())
            skeleton.set_submodule(name, QuantLinear(**spec, device="meta"))
    return skeleton


def _narrowest(model: nn.Module, adapter: Adapter, round_to: int) -> nn.Module:
    """A meta copy whose layers are as narrow as pruning may make them: one kv group, the fewest MLP channels."""
    skeleton = _meta_copy(model, adapter)
    target = adapter_for(skeleton)
    for i in range(target.num_layers):
        g = layer_groups(adapter.layer(i))
        target.resize_layer(i, g.n_rep, 1, min(round_to, g.mlp_width))
    return skeleton
