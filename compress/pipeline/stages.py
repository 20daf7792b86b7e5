"""The stages a recipe lists, each wrapping the config dataclass its API call takes.

``Prune(PruneConfig)``, ``Recover(RecoverConfig)``, ``Quantize(QuantConfig)``
and ``Export(formats)``.  A recipe may also list the bare configs (or a
quantisation shorthand such as ``"int4"``); ``as_stage`` wraps them.  In YAML a
stage is a one-key mapping, ``{prune: {sparsity: 0.3}}``, whose keys are the
config's fields (GPTQ's ``calibration_sequences`` is ``QuantConfig``'s own
field, with its one default); ``{quantize: int4}``, ``{prune: 0.3}`` and ``{export: [hf, gguf]}``
are shorthands.

A quantize stage directly followed by a recover stage is trained with
quantisation in the loop (QAT): the quantize stage puts fake-quantised
modules in, and the recover stage ramps them in and packs them at the end.
"""
from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Union

from compress.errors import ConfigError, quote, shorten
from compress.pruning.config import PruneConfig
from compress.quantization.config import SHORTHANDS, QuantConfig, resolve_config
from compress.recovery.config import RESUME_EXEMPT, RecoverConfig

STAGE_KINDS = ("prune", "recover", "quantize", "export")
NATIVE = "native"
# Fields that change what is shown, never the weights: left out of fingerprints.
_DISPLAY_ONLY = {"progress", *RESUME_EXEMPT}


class RecipeError(ConfigError):
    """A recipe that cannot be read or used: unknown keys, stages or values."""


@dataclass
class StageContext:
    """What a model-changing stage needs from the run: the text, the original model, its training folder."""

    splits: Any  # compress.data.TextSplits
    original: Any = None  # the uncompressed model (recovery's teacher)
    qat: bool = False  # a quantize stage followed by recover: fake-quantise for QAT instead of packing
    train_dir: Callable[[], Path] | None = None  # recover: made (and emptied of another run's state) on demand
    log: Callable[[str], Any] = print
    stored_dtype: str | None = None  # what the first export after this stage stores floats in (a size budget's measure)


@dataclass(frozen=True)
class Prune:
    """Structured pruning (``compress.prune``) with this config, calibrated on the recipe's text."""

    config: PruneConfig = field(default_factory=PruneConfig)
    kind: ClassVar[str] = "prune"

    def label(self) -> str:
        c = self.config
        incremental = f", {c.stages} incremental stages" if c.stages > 1 else ""
        return f"prune {c.method} {c.importance} {c.sparsity:.0%}{incremental}"

    def options(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self.config))

    def apply(self, model: Any, context: StageContext) -> tuple[dict[str, Any], str]:
        """Prune ``model`` in place; the report as a dict and as text."""
        from compress import api

        report = api.prune(model, self.config, data=context.splits)
        return report.to_dict(), report.table()


@dataclass(frozen=True)
class Recover:
    """Recovery training (``compress.recover``) toward the original model; the run sets output_dir and resume."""

    config: RecoverConfig = field(default_factory=RecoverConfig)
    kind: ClassVar[str] = "recover"

    def __post_init__(self) -> None:
        if self.config.output_dir is not None or self.config.resume:
            raise RecipeError(
                "A recover stage must not set output_dir or resume: the run keeps its training state under "
                "OUTPUT/train and resumes it by itself; remove them."
            )

    def label(self) -> str:
        c = self.config
        budget = f"{c.tokens:,} tokens" if c.tokens is not None else f"{c.total_steps(1)} steps"
        lora = f", LoRA r{c.lora_rank}" if c.lora_rank else ""
        return f"recover {budget}{lora}"

    def options(self) -> dict[str, Any]:
        return self.config.to_dict()

    @property
    def wants_heldout(self) -> bool:
        """Recovery's own held-out evaluations run only when asked for (the run evaluates every stage anyway)."""
        return self.config.eval_every > 0 or self.config.patience > 0

    def apply(self, model: Any, context: StageContext) -> tuple[dict[str, Any], str]:
        """Train ``model`` toward the original in place, resuming from the run's training folder."""
        from compress import api

        config = dataclasses.replace(self.config, output_dir=str(context.train_dir()), resume=True)
        eval_data = context.splits.eval if self.wants_heldout else None
        report = api.recover(model, context.original, context.splits.train, config, eval_data=eval_data)
        if report.resumed_from is not None:
            context.log(f"    resumed from the training checkpoint at step {report.resumed_from}")
        report.checkpoint = None  # the run deletes the training checkpoints once the stage is saved
        return report.to_dict(), str(report)


@dataclass(frozen=True)
class Quantize:
    """Quantisation (``compress.quantize``); GPTQ calibrates on the first ``config.calibration_sequences``
    sequences of the calibration split (``QuantConfig``'s field: one knob, one default)."""

    config: QuantConfig = field(default_factory=QuantConfig)
    # the older spelling, Quantize(config, calibration_sequences=N): folded into the config, which holds the knob
    calibration_sequences: InitVar[Optional[int]] = None
    kind: ClassVar[str] = "quantize"

    def __post_init__(self, calibration_sequences: Optional[int]) -> None:
        if isinstance(self.config, str) or self.config is None:
            object.__setattr__(self, "config", resolve_config(self.config))
        if calibration_sequences is not None:
            try:
                config = dataclasses.replace(self.config, calibration_sequences=calibration_sequences)
            except ConfigError as err:
                raise RecipeError(str(err)) from None
            object.__setattr__(self, "config", config)

    def label(self) -> str:
        return f"quantize {self.config.label()}"

    def options(self) -> dict[str, Any]:
        return self.config.to_dict()

    def apply(self, model: Any, context: StageContext) -> tuple[dict[str, Any], str]:
        """Quantise ``model`` in place (or prepare it for QAT when a recover stage follows)."""
        if context.qat:
            from compress.quantization import prepare_qat

            report = prepare_qat(model, self.config)
        else:
            from compress import api

            budget = self.config.target_size is not None
            # quantize caps GPTQ at calibration_sequences; a budget measures target_sequences windows of it
            ids = context.splits.calibration if self.config.needs_data else None
            report = api.quantize(model, self.config, data=ids, **({"dtype": context.stored_dtype} if budget else {}))
        return report.to_dict(), report.table()


@dataclass(frozen=True)
class Export:
    """Write the final model in each of ``formats`` under OUTPUT/exports/<format>.

    ``verify``: load each export with a loader that is not compress-lm's and
    compare logits before it counts as written.  ``gguf_type``: the GGUF
    block type (f16, q8_0, q4_0, q4_1, tq2_0, tq1_0; None picks one from the model).
    ``dtype``: what float tensors are stored in (bfloat16, float16, float32;
    None: each format's default, bfloat16, or float16 for gptq and gguf).
    """

    formats: tuple[str, ...] = (NATIVE,)
    verify: bool = False
    gguf_type: str | None = None
    dtype: str | None = None
    kind: ClassVar[str] = "export"

    def __post_init__(self) -> None:
        formats = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        if not formats or not all(isinstance(f, str) and f for f in formats):
            raise RecipeError(f"export formats must be a non-empty list of format names, got {quote(self.formats)}.")
        if len(set(formats)) != len(formats):
            raise RecipeError(f"export formats lists a format twice: {quote(list(formats))}; list each once.")
        object.__setattr__(self, "formats", formats)
        if not isinstance(self.verify, bool):
            raise RecipeError(f"export verify must be true or false, got {quote(self.verify)}.")
        if self.dtype is not None:
            from compress.io.storage import DTYPES

            if self.dtype not in DTYPES:
                raise RecipeError(f"export dtype must be one of {', '.join(DTYPES)} (or left out for each format's "
                                  f"default), got {quote(self.dtype)}.")
        if self.gguf_type is not None and "gguf" not in formats:
            raise RecipeError(f"export gguf_type applies to the gguf format, which formats {quote(list(formats))} does not list.")

    def label(self) -> str:
        return "export " + ", ".join(self.formats) + (" (verified)" if self.verify else "")

    def options(self) -> dict[str, Any]:
        options = {"formats": list(self.formats), "verify": self.verify, "gguf_type": self.gguf_type}
        return {**options, "dtype": self.dtype} if self.dtype is not None else options  # unchanged fingerprints without it


Stage = Union[Prune, Recover, Quantize, Export]
StageLike = Union[Stage, PruneConfig, RecoverConfig, QuantConfig, str, Mapping[str, Any]]


def as_stage(item: StageLike, where: str = "stage") -> Stage:
    """A stage from a stage, a bare config, a quantisation shorthand or a one-key YAML mapping."""
    if isinstance(item, (Prune, Recover, Quantize, Export)):
        return item
    if isinstance(item, PruneConfig):
        return Prune(item)
    if isinstance(item, RecoverConfig):
        return Recover(item)
    if isinstance(item, QuantConfig):
        return Quantize(item)
    if isinstance(item, str):
        if item in STAGE_KINDS:
            return _from_mapping({item: None}, where)
        if item.strip().lower() in SHORTHANDS:
            return Quantize(resolve_config(item))
        raise RecipeError(
            f"{where} is {quote(item)}, which is neither a stage ({', '.join(STAGE_KINDS)}) nor a quantisation "
            f"shorthand ({', '.join(SHORTHANDS)}); write it as a mapping such as {{prune: {{sparsity: 0.3}}}}."
        )
    if isinstance(item, Mapping):
        return _from_mapping(item, where)
    raise RecipeError(
        f"{where} is a {type(item).__name__}; give a mapping such as {{quantize: int4}}, a config dataclass "
        f"(PruneConfig, RecoverConfig, QuantConfig) or a Prune/Recover/Quantize/Export stage."
    )


def _from_mapping(item: Mapping[str, Any], where: str) -> Stage:
    if len(item) != 1:
        raise RecipeError(
            f"{where} has keys {quote(sorted(map(str, item)))}; each stage is a mapping with exactly one key, the stage "
            f"kind ({', '.join(STAGE_KINDS)}), e.g. {{prune: {{sparsity: 0.3}}}}."
        )
    (kind, value), = item.items()
    if kind not in STAGE_KINDS:
        raise RecipeError(f"{where} is of unknown kind {quote(kind)}; stages are {', '.join(STAGE_KINDS)}.")
    where = f"{where} ({kind})"
    try:
        if kind == "prune":
            options = _options({"sparsity": value} if _is_number(value) else value, where)
            if isinstance(options.get("recover"), Mapping):  # incremental pruning's training between stages
                options["recover"] = build_config(RecoverConfig, dict(options["recover"]), f"{where} recover")
            return Prune(build_config(PruneConfig, options, where))
        if kind == "recover":
            return Recover(build_config(RecoverConfig, _options(value, where), where))
        if kind == "quantize":
            if isinstance(value, str):
                return Quantize(resolve_config(value))
            return Quantize(build_config(QuantConfig, _options(value, where), where))
        if isinstance(value, Mapping):
            return build_config(Export, dict(value), where)
        return Export(NATIVE if value is None else value)
    except RecipeError:
        raise
    except ConfigError as err:  # a config's own validation: say where it came from (its quoted values cut short)
        raise RecipeError(shorten(f"In {where}: {err}")) from None


def _options(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RecipeError(f"{where} must map option names to values, got {type(value).__name__} {quote(value)}.")
    return dict(value)


def build_config(cls: type, options: dict[str, Any], where: str) -> Any:
    """``cls(**options)`` after naming unknown keys and coercing what YAML reads differently."""
    fields = {f.name: f for f in (cls.config_fields() if hasattr(cls, "config_fields") else dataclasses.fields(cls))}
    unknown = set(options) - set(fields)
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise RecipeError(f"Unknown key(s) {_keys(unknown)} in {where}; allowed keys are: {allowed}.")
    for name, value in options.items():
        options[name] = _coerce(value, str(fields[name].type))
    return cls(**options)


def _coerce(value: Any, annotation: str) -> Any:
    # YAML 1.1 reads 1e-4 (no dot) as a string; lists stand for tuples.
    if isinstance(value, str) and "float" in annotation:
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list) and "tuple" in annotation:
        return tuple(value)
    return value


def _plain(x: Any) -> Any:
    """Tuples as lists, all the way down: what YAML and JSON write."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _keys(keys: set) -> str:
    names = sorted(map(str, keys))
    return ", ".join(quote(k, 60) for k in names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def stage_options(stage: Stage, for_fingerprint: bool = False) -> dict[str, Any]:
    """``{kind: options}``: the YAML form of a stage; without display-only fields when fingerprinting."""
    options = stage.options()
    return {stage.kind: _without_display(options) if for_fingerprint else options}


def _without_display(options: Any) -> Any:
    if isinstance(options, dict):
        return {k: _without_display(v) for k, v in options.items() if k not in _DISPLAY_ONLY}
    return options
