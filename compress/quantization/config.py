"""``QuantConfig``: what to quantise and how, validated before any weight is touched.

``QuantConfig(...)`` builds ``Int4Config`` or ``TernaryConfig`` by its
``method``: each holds the shared fields and its own; ``to_dict`` writes the
flat form (every field of both) that manifests and recipes keep.

A string is a shorthand for a config (``"ternary"``, ``"int4"``,
``"int4-gptq"``, ... see ``SHORTHANDS``).  ``overrides`` maps a module name or
regex to another config, a shorthand, a dict of field changes, or None to keep
that module in full precision.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional, Union

import torch

from compress.errors import CompressError, ConfigError

METHODS = ("ternary", "int4")
TERNARY_SCALES = ("absmean", "absmedian")
ACTIVATIONS = ("a16", "a8")
SCALE_DTYPES = ("float16", "bfloat16", "float32")
ZERO_POINTS = ("integer", "float")
EMBEDDING_FORMATS = ("int8", "int4")  # see compress.quantization.embedding
EMBEDDING_ROUNDINGS = ("gptq", "nearest")
CALIBRATION_DTYPES = ("auto", "float32", "bfloat16")  # GPTQ's calibration arithmetic (Int4Config.calibration_dtype)
# The pseudo-name for the model's output head, whatever its path is.
OUTPUT_HEAD = "lm_head"
# Candidate formats a size budget (``target_size``) chooses among: per linear module, and for the embedding table
# (with the output head).  See compress.quantization.budget.
TARGET_FORMATS = ("keep", "int4-g128", "int4-g64", "int4-g32", "int3-g128", "int3-g64", "int3-g32", "ternary",
                  "embeddings-int8", "embeddings-int4")
# What a budget chooses among unless told: every candidate.  int3 modules export to compressed-tensors, gptq and
# GGUF (there in exact 4-bit blocks, so a GGUF file of an int3 plan is larger than the native checkpoint).
DEFAULT_TARGET_FORMATS = TARGET_FORMATS
INT_BITS = (3, 4)  # code widths of the group-wise integer format (Int4Config.bits)
TARGET_METRICS = ("layer-error", "module-error", "kl")


class QuantError(CompressError):
    """A model or module that cannot be quantised as asked."""


# The fields of the two configs, in the order of the flat form (``to_dict``, positional arguments, manifests).
FIELD_ORDER = (
    "method", "scale", "per_channel", "activations", "bits", "group_size", "symmetric", "zero_point", "gptq", "damp",
    "act_order", "clip_search", "gptaq", "gptaq_alpha", "group_refit", "block_size", "true_sequential",
    "calibration_batch_size", "calibration_sequences", "scale_dtype", "embeddings", "embedding_group_size", "modules_to_not_convert",
    "overrides", "target_size", "target_formats", "target_metric", "target_sequences", "progress",
    "embedding_rounding", "calibration_dtype", "static_groups", "code_sweeps",
)


class _PicksMethod(type):
    """``QuantConfig(...)`` builds the config class of its ``method``: ``Int4Config`` or ``TernaryConfig``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if not getattr(cls, "_picks_method", False):
            return super().__call__(*args, **kwargs)
        if len(args) > len(FIELD_ORDER):
            raise TypeError(f"{cls.__name__} takes at most {len(FIELD_ORDER)} positional arguments, got {len(args)}.")
        for name, value in zip(FIELD_ORDER, args):
            if name in kwargs:
                raise TypeError(f"{cls.__name__} got multiple values for argument {name!r}.")
            kwargs[name] = value
        method = kwargs.get("method", cls.method)
        target = _BY_METHOD.get(method) if isinstance(method, str) else None
        if target is None:
            _choice("method", method, METHODS)
        other = _BY_METHOD[METHODS[1 - METHODS.index(method)]]
        foreign = {k: kwargs[k] for k in other._own if k in kwargs}
        if foreign and cls is not other:  # given with the other method's config class (not carried over by replace)
            _refuse_foreign(method, foreign)
        # Carried over when replace() switches the method, or given at their defaults: they mean nothing here.
        for k in foreign:
            del kwargs[k]
        return super(_PicksMethod, target).__call__(**kwargs)


def _refuse_foreign(method: str, foreign: dict[str, Any]) -> None:
    """One ConfigError for fields of the other method given with a value other than their default."""
    for name in ("scale", "activations", "zero_point"):  # invalid values keep their own message
        if name in foreign and name in _CHOICES:
            _choice(name, foreign[name], _CHOICES[name])
    if "group_size" in foreign:
        _check_group_size(foreign["group_size"])
    if method == "int4" and foreign.get("activations") == "a8":
        raise ConfigError("activations='a8' is only available for ternary weights; use 'a16' with int4.")
    other = "int4" if method == "ternary" else "ternary"
    defaults = _BY_METHOD[other]._defaults
    set_ = [f"{k}={v!r}" for k, v in foreign.items() if not _same(v, defaults[k])]
    if set_:
        them = "it" if len(set_) == 1 else "them"
        raise ConfigError(f"{', '.join(set_)} {'applies' if len(set_) == 1 else 'apply'} to {other} only; "
                          f"drop {them} or use method={other!r}.")


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


@dataclass(frozen=True)
class QuantConfig(metaclass=_PicksMethod):
    """How to quantise the ``nn.Linear`` modules of a model.

    ternary: weights to {-1, 0, 1} times ``scale`` = mean(|W|) ("absmean",
    BitNet b1.58) or median(|W|) ("absmedian", Reloaded), per tensor or per
    output channel; activations kept ("a16") or 8-bit absmax per token ("a8").
    int4: round-to-nearest or GPTQ, symmetric (offset 8) or asymmetric (zero
    points), groups of ``group_size`` inputs (the last may be partial; -1: one group per channel).
    ``bits=3`` stores 3-bit codes instead (int3: codes 0..7, offset 4 when
    symmetric; everything else as int4), for files below what int4 reaches.
    Asymmetric zero points are whole codes ("integer", as GPTQ and
    compressed-tensors store them; the range always includes 0) or exact
    min-max offsets ("float", as GGUF Q4_1 and HQQ: a lower error, native
    checkpoints only).
    GPTQ: ``damp`` is the fraction of the mean Hessian diagonal added to it;
    ``act_order`` (default on) visits columns by decreasing Hessian diagonal
    (groups stay runs of consecutive columns, so the packed layout stays
    plain); without it GPTQ overfits the calibration text (SmolLM2-135M int4
    g64: worse than round-to-nearest on unseen text).  Under act_order each
    group's parameters come from its weights as the loop has updated them when
    it first reaches one of the group's columns; ``static_groups=True`` takes
    them from the original weights instead (the behaviour before 2026-12-07).
    ``code_sweeps`` (GPTQ; default 1): sweeps of coordinate descent over the
    codes after the column loop and the refit (QuantEase): each column's codes,
    the others fixed, are the grid points nearest the layer objective's
    minimum, each sweep followed by another refit when ``group_refit`` is on.  SmolLM2-135M int4 GPTAQ,
    float zero points, 29 held-out sequences: g128 Shakespeare 1.072x -> 1.055x,
    news 1.105x -> 1.096x; g64 1.047x -> 1.050x, 1.056x -> 1.051x (the two
    together; README).
    ``clip_search`` (int4, RTN and GPTQ; default on) shrinks each group's range
    by factors 1.0, 0.98, ..., 0.8 and keeps the one with the least squared
    rounding error (weighted by the Hessian diagonal under GPTQ).
    ``gptaq`` (GPTQ only, default on: GPTQv2's asymmetric calibration) makes
    each layer match the original model's outputs rather than its own
    weights' outputs on the already-quantised inputs, so the error accumulated
    in earlier layers is compensated too; it runs the original layer beside
    the quantised one (about twice the calibration passes); ``gptaq_alpha``
    scales that term.  SmolLM2-135M int4 g64, news KL 0.213 -> 0.188
    (symmetric), 0.174 -> 0.148 (zero points).
    ``group_refit`` (GPTQ only, default on) refits each group's scale (and
    float zero point) after the column loop: with the codes fixed, the
    dequantised weight is linear in them, so each output row's parameters are
    solved jointly by least squares for GPTQ's own objective (the layer's
    output error on the calibration inputs, GPTAQ's target included), a row
    keeping its old ones unless the refit lowers that error.  SmolLM2-135M
    int4 GPTAQ, float zero points, news perplexity: g128 1.159x -> 1.142x,
    g64 1.088x -> 1.087x (Shakespeare: g128 1.083x -> 1.082x, g64 1.083x -> 1.057x; README).
    ``true_sequential`` quantises q/k/v, o, the MLP inputs and the MLP output
    in turn, each with inputs from the already-quantised ones.
    ``calibration_sequences`` caps the calibration sequences GPTQ reads (128,
    as the GPTQ paper; each costs a few layer passes on every layer).
    ``calibration_dtype`` ("auto" by default) runs GPTQ's calibration
    forwards and input products in bfloat16 where the device multiplies it
    natively (a CUDA GPU, a CPU with AMX or AVX512-BF16) and in float32
    elsewhere; "float32" / "bfloat16" pin it.  The Hessians accumulate, and
    GPTQ runs, in float32 either way.

    ``modules_to_not_convert`` holds names or regexes of modules to keep in
    full precision; ``"lm_head"`` stands for the model's output head whatever
    its path.  ``embeddings`` quantises the input embedding and the output
    head (tied: once, they stay tied) as ``"int8"`` (per row) or ``"int4"``
    (groups of ``embedding_group_size`` along the row); None keeps them.
    ``embedding_rounding="gptq"`` (default) chooses the codes of the head's
    rows (a tied table's) by GPTQ against the head's inputs on up to 32
    calibration sequences when ``data`` is given (round to nearest without
    it, with a note); ``"nearest"`` always rounds to nearest.  ``overrides`` maps a name or
    regex to a config, a shorthand, a dict of field changes, or None (keep);
    the first matching key wins.  A name matches a key when it equals it,
    ends with ``"." + key``, or ``re.fullmatch``-es it.

    ``target_size`` (bytes, or a string with a unit: ``"80MiB"``, ``"1.2GB"``)
    turns on the size budget (``compress.quantization.budget``): each decoder
    projection's error under each of ``target_formats`` is measured with the
    sensitivity probes (``target_metric`` on ``target_sequences`` calibration
    windows), each format's bytes are predicted from the storage rules, and the
    formats with the least summed predicted error whose weights file fits the
    budget are chosen, then applied as ``overrides``.  int3 (``int3-g128`` /
    ``g64`` / ``g32``) is among the default candidates; leave it out of
    ``target_formats`` for a model whose GGUF file must meet the budget too
    (GGUF stores int3 in 4-bit blocks).  The other fields
    (symmetric, gptq, scale_dtype, ...) apply to every int4 / ternary module chosen.

    ``QuantConfig(...)`` returns the config class of its method: ``Int4Config``
    or ``TernaryConfig``, which hold the fields shared here plus their own.
    Reading a field of the other method gives its default (a ternary config's
    ``gptq`` is False); giving one raises a ``ConfigError``.  ``to_dict`` writes
    the flat form (every field) that ``from_dict`` and manifests read.
    """

    _picks_method: ClassVar[bool] = True
    _own: ClassVar[tuple[str, ...]] = ()  # the fields only this method has
    _defaults: ClassVar[dict[str, Any]] = {}

    method: str = "int4"
    # storage and targeting
    scale_dtype: str = "float16"
    embeddings: Optional[str] = None
    embedding_group_size: int = 32
    embedding_rounding: str = "gptq"
    modules_to_not_convert: tuple[str, ...] = (OUTPUT_HEAD,)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # size budget (compress.quantization.budget)
    target_size: Optional[Union[int, str]] = None
    target_formats: tuple[str, ...] = DEFAULT_TARGET_FORMATS
    target_metric: str = "layer-error"
    target_sequences: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("scale_dtype", self.scale_dtype, SCALE_DTYPES)
        if self.embeddings is not None and self.embeddings not in EMBEDDING_FORMATS:
            raise ConfigError(f"embeddings must be one of {', '.join(map(repr, EMBEDDING_FORMATS))} or None, "
                              f"got {self.embeddings!r}.")
        _choice("embedding_rounding", self.embedding_rounding, EMBEDDING_ROUNDINGS)
        eg = self.embedding_group_size
        if not isinstance(eg, int) or isinstance(eg, bool) or eg < 2 or eg & (eg - 1):
            raise ConfigError(f"embedding_group_size must be a power of two >= 2 (32 by default, GGUF's Q4_0 block), "
                              f"got {eg!r}.")
        self._check_method_fields()
        keep = self.modules_to_not_convert
        if isinstance(keep, str):
            keep = (keep,)
        object.__setattr__(self, "modules_to_not_convert", tuple(keep))
        for pattern in self.modules_to_not_convert:
            _check_pattern(pattern, "modules_to_not_convert")
        object.__setattr__(self, "overrides", self._normalise_overrides(self.overrides))
        self._check_target()

    def _check_method_fields(self) -> None:
        """Validate the fields of this method (each subclass checks its own)."""
    def _check_target(self) -> None:
        if self.target_size is not None:
            from compress.sizes import parse_size

            object.__setattr__(self, "target_size", parse_size(self.target_size))
        formats = self.target_formats
        formats = (formats,) if isinstance(formats, str) else tuple(formats)
        object.__setattr__(self, "target_formats", formats)
        unknown = [f for f in formats if f not in TARGET_FORMATS]
        if unknown or not formats or len(set(formats)) != len(formats):
            raise ConfigError(f"target_formats must name each of some of {', '.join(TARGET_FORMATS)} once, "
                              f"got {list(formats)}.")
        _choice("target_metric", self.target_metric, TARGET_METRICS)
        n = self.target_sequences
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"target_sequences must be an integer >= 1 (calibration windows the size budget "
                              f"measures errors on), got {n!r}.")

    # -- overrides ---------------------------------------------------------
    def _normalise_overrides(self, overrides: Mapping[str, Any]) -> dict[str, "QuantConfig | None"]:
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"overrides must be a mapping from module name or regex to a config, got {type(overrides).__name__}.")
        base = None
        out: dict[str, QuantConfig | None] = {}
        for key, value in overrides.items():
            _check_pattern(key, "overrides")
            if value is None or isinstance(value, QuantConfig):
                cfg = value
            elif isinstance(value, str):
                cfg = resolve_config(value)
            elif isinstance(value, Mapping):
                base = base or dataclasses.replace(self, overrides={}, modules_to_not_convert=(), target_size=None)
                unknown = sorted(set(value) - _QUANTISER_FIELDS)
                if unknown:
                    raise ConfigError(
                        f"override {key!r} sets unknown or non-quantiser fields {unknown}; "
                        f"use some of {sorted(_QUANTISER_FIELDS)}."
                    )
                # switching method drops the other method's fields (GPTQ is int4-only)
                cfg = dataclasses.replace(base, **value)
            else:
                raise ConfigError(
                    f"override {key!r} must be a QuantConfig, a shorthand string, a dict of field changes "
                    f"or None, got {type(value).__name__}."
                )
            # An override describes one module: its own targeting fields mean nothing.
            out[key] = None if cfg is None else dataclasses.replace(cfg, overrides={}, modules_to_not_convert=(),
                                                                   target_size=None)
        return out

    def for_module(self, name: str) -> "QuantConfig | None":
        """The config that applies to module ``name`` (None: keep it in full precision)."""
        for key, cfg in self.overrides.items():
            if name_matches(name, key):
                return cfg
        return self

    # -- descriptions ------------------------------------------------------
    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return getattr(torch, self.scale_dtype)

    @property
    def packed_method(self) -> str:
        """The method of the packed modules this config makes (``QuantLinear.method``); see :func:`packed_method_of`."""
        return packed_method_of(self.method, self.bits)

    def label(self) -> str:
        """Short human name, e.g. ``int4 g128 sym gptq`` or ``ternary absmean a16``."""
        if self.target_size is not None:
            from compress.sizes import format_size

            return f"size budget {format_size(self.target_size)} ({self.target_metric}, {'gptq' if self.gptq else 'rtn'})"
        return " ".join(self._label_parts())

    def _label_parts(self) -> list[str]:
        raise NotImplementedError

    def quantiser_key(self) -> tuple:
        """The fields that decide stored values (two configs with equal keys quantise alike)."""
        raise NotImplementedError

    @property
    def embedding_gptq(self) -> bool:
        """Whether the embedding table's codes are chosen against the head's inputs (then calibration text is read)."""
        return self.embeddings is not None and self.embedding_rounding == "gptq"

    @property
    def needs_data(self) -> bool:
        """Whether quantising with this config reads calibration text: GPTQ, a size budget, or the table's GPTQ codes."""
        return self.gptq or self.target_size is not None or self.embedding_gptq

    def to_dict(self) -> dict[str, Any]:
        """JSON-able flat form, every field of both methods (overrides included); ``QuantConfig.from_dict`` reverses it."""
        d = {name: getattr(self, name) for name in FIELD_ORDER if name != "overrides"}
        d["modules_to_not_convert"] = list(self.modules_to_not_convert)
        d["target_formats"] = list(self.target_formats)
        d["overrides"] = {k: (None if v is None else v.to_dict()) for k, v in self.overrides.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantConfig":
        names = set(FIELD_ORDER)
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown QuantConfig fields {unknown}; known ones are {sorted(names)}.")
        d = dict(d)
        target = _BY_METHOD.get(d.get("method", cls.method))
        if target is not None:  # the flat form holds the other method's fields too: they mean nothing here
            d = {k: v for k, v in d.items() if k not in _BY_METHOD[METHODS[1 - METHODS.index(target.method)]]._own}
        d["modules_to_not_convert"] = tuple(d.get("modules_to_not_convert", (OUTPUT_HEAD,)))
        d["overrides"] = {
            k: (QuantConfig.from_dict(v) if isinstance(v, Mapping) else v) for k, v in d.get("overrides", {}).items()
        }
        return QuantConfig(**d)

    @classmethod
    def config_fields(cls) -> tuple[dataclasses.Field, ...]:
        """Every field a ``QuantConfig(...)`` call may set (both methods'), in the flat order."""
        found = {f.name: f for c in (Int4Config, TernaryConfig) for f in dataclasses.fields(c)}
        return tuple(found[name] for name in FIELD_ORDER)


@dataclass(frozen=True)
class TernaryConfig(QuantConfig):
    """Ternary weights (BitNet b1.58): the shared fields plus ``scale``, ``per_channel`` and ``activations``."""

    _own: ClassVar[tuple[str, ...]] = ("scale", "per_channel", "activations")

    method: str = "ternary"
    scale: str = "absmean"
    per_channel: bool = False
    activations: str = "a16"

    def _check_method_fields(self) -> None:
        _choice("method", self.method, ("ternary",))
        _choice("scale", self.scale, TERNARY_SCALES)
        _choice("activations", self.activations, ACTIVATIONS)

    def _label_parts(self) -> list[str]:
        return ["ternary", self.scale, "per-channel" if self.per_channel else "per-tensor", self.activations]

    def quantiser_key(self) -> tuple:
        return ("ternary", self.scale, self.per_channel, self.activations, self.scale_dtype)


@dataclass(frozen=True)
class Int4Config(QuantConfig):
    """Group-wise int4 weights, round-to-nearest or GPTQ: the shared fields plus the int4 and GPTQ ones."""

    _own: ClassVar[tuple[str, ...]] = (
        "bits", "group_size", "symmetric", "zero_point", "gptq", "damp", "act_order", "clip_search", "gptaq", "gptaq_alpha",
        "group_refit", "block_size", "true_sequential", "calibration_batch_size", "calibration_sequences",
        "calibration_dtype", "static_groups", "code_sweeps",
    )

    method: str = "int4"
    bits: int = 4  # 3: int3 codes 0..7 (offset 4 when symmetric), 3 bits per weight packed as bit planes
    group_size: int = 128
    symmetric: bool = True
    zero_point: str = "integer"
    gptq: bool = False
    damp: float = 0.01
    act_order: bool = True
    clip_search: bool = True
    gptaq: bool = True
    gptaq_alpha: float = 0.25
    group_refit: bool = True
    block_size: int = 128
    true_sequential: bool = True
    calibration_batch_size: int = 4
    calibration_sequences: Optional[int] = 128  # GPTQ uses at most this many calibration sequences (None: all)
    # "bfloat16": the layer forwards of GPTQ's calibration passes under bfloat16 autocast and each batch's input
    # products from bf16-rounded inputs (the Hessians accumulate in float32; the inverse and the column loop stay
    # float32): several times faster matmuls where the hardware has bf16 units (AMX, AVX512-BF16, tensor cores).
    # "auto": bfloat16 on such hardware, float32 elsewhere (emulated bf16 is slower than float32).
    calibration_dtype: str = "auto"
    static_groups: bool = False
    code_sweeps: int = 1

    def _check_method_fields(self) -> None:
        _choice("method", self.method, ("int4",))
        if not isinstance(self.code_sweeps, int) or isinstance(self.code_sweeps, bool) or self.code_sweeps < 0:
            raise ConfigError(f"code_sweeps must be a whole number >= 0 (0: GPTQ's codes as the column loop chose "
                              f"them), got {self.code_sweeps!r}.")
        _choice("calibration_dtype", self.calibration_dtype, CALIBRATION_DTYPES)
        if self.bits not in INT_BITS or isinstance(self.bits, bool):
            raise ConfigError(f"bits must be 4 (int4) or 3 (int3) for group-wise integer weights, got {self.bits!r}.")
        _choice("zero_point", self.zero_point, ZERO_POINTS)
        _check_group_size(self.group_size)
        if not 0.0 <= self.gptaq_alpha <= 1.0:
            raise ConfigError(f"gptaq_alpha must be between 0 and 1 (0.25 in the GPTQv2 paper), got {self.gptaq_alpha!r}.")
        if not 0.0 < self.damp < 1.0:
            raise ConfigError(f"damp must be between 0 and 1 (a fraction of the mean Hessian diagonal), got {self.damp}.")
        for name in ("block_size", "calibration_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        n = self.calibration_sequences
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(f"calibration_sequences must be at least 1 (or None to use them all), got {n!r}.")

    def calibration_torch_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype GPTQ's calibration passes compute in on ``device`` ("auto": bfloat16 where it is native)."""
        if self.calibration_dtype == "auto":
            from compress.machine import native_bf16

            return torch.bfloat16 if native_bf16(device) else torch.float32
        return getattr(torch, self.calibration_dtype)

    def _label_parts(self) -> list[str]:
        g = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        asym = "asym" if self.zero_point == "integer" else "asym-float-zero"
        return [f"int{self.bits}", g, "sym" if self.symmetric else asym, "gptq" if self.gptq else "rtn"]

    def quantiser_key(self) -> tuple:
        return (f"int{self.bits}", self.group_size, self.symmetric, self.symmetric or self.zero_point, self.scale_dtype,
                self.clip_search)


_BY_METHOD: dict[str, type] = {"int4": Int4Config, "ternary": TernaryConfig}
for _cls in (Int4Config, TernaryConfig):
    _cls._picks_method = True
    _cls._defaults = {f.name: f.default for f in dataclasses.fields(_cls) if f.name in _cls._own}
    for _name, _value in _cls._defaults.items():  # what the other method's config reads for these
        setattr(QuantConfig, _name, _value)
del _cls, _name, _value
_CHOICES = {"scale": TERNARY_SCALES, "activations": ACTIVATIONS, "zero_point": ZERO_POINTS}


def packed_method_of(method: str, bits: int = 4) -> str:
    """The packed method (``compress.kernels.formats``) of config fields: ``"int3"`` for int4 with ``bits=3``,
    else ``method``."""
    return "int3" if method == "int4" and bits == 3 else method


def _check_group_size(g: Any) -> None:
    if not isinstance(g, int) or isinstance(g, bool) or (g != -1 and (g < 16 or g & (g - 1))):
        raise ConfigError(
            f"group_size must be a power of two >= 16 (32, 64 or 128; it need not divide in_features, "
            f"the last group may be partial) or -1 for one group per output channel, got {g!r}."
        )


_QUANTISER_FIELDS = {
    "method", "scale", "per_channel", "activations", "bits", "group_size", "symmetric", "zero_point", "gptq",
    "damp", "act_order", "clip_search", "block_size", "scale_dtype", "gptaq", "gptaq_alpha", "group_refit",
    "static_groups", "code_sweeps",
}

SHORTHANDS: dict[str, dict[str, Any]] = {
    "int4": {},
    "int4-asym": {"symmetric": False},
    "int4-gptq": {"gptq": True},
    "int4-gptq-asym": {"gptq": True, "symmetric": False},
    "int3": {"bits": 3},
    "int3-asym": {"bits": 3, "symmetric": False},
    "int3-gptq": {"bits": 3, "gptq": True},
    "int3-gptq-asym": {"bits": 3, "gptq": True, "symmetric": False},
    "ternary": {"method": "ternary"},
    "ternary-absmedian": {"method": "ternary", "scale": "absmedian"},
    "ternary-a8": {"method": "ternary", "activations": "a8"},
}

ConfigLike = Union[QuantConfig, str, None]


def resolve_config(config: ConfigLike = None, **changes: Any) -> QuantConfig:
    """Turn a shorthand (or None, meaning "int4") into a ``QuantConfig``; apply field ``changes``."""
    if config is None:
        config = "int4"
    if isinstance(config, str):
        key = config.strip().lower()
        if key not in SHORTHANDS:
            raise ConfigError(
                f"unknown quantisation method {config!r}; use one of {', '.join(SHORTHANDS)} or a QuantConfig."
            )
        config = QuantConfig(**SHORTHANDS[key])
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"expected a QuantConfig or a shorthand string, got {type(config).__name__}.")
    return dataclasses.replace(config, **changes) if changes else config


def name_matches(name: str, pattern: str) -> bool:
    """True when ``name`` equals ``pattern``, ends with ``"." + pattern``, or fullmatches it as a regex."""
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _check_pattern(pattern: Any, where: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{where} entries must be non-empty module names or regexes, got {pattern!r}.")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where} entry {pattern!r} is neither a module name nor a valid regex ({exc}).") from None


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}.")
