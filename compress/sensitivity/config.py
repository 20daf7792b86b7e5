"""``SensitivityConfig`` and the quantisation formats a sensitivity pass can try.

A format is a name (``"int4-g128"``, ``"ternary-absmean"``, ...) for one
round-to-nearest quantiser.  When a module's shape does not fit the format as
named (a group size the packed format refuses for that ``in_features``), the
nearest smaller group size that fits is used and reported, so every module
gets the closest thing ``compress.quantize`` would accept.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from compress.errors import ConfigError
from compress.kernels.formats import get_format
from compress.quantization.config import QuantConfig, TernaryConfig, packed_method_of

METRICS = ("module-error", "layer-error", "kl")
IMPORTANCES = ("taylor", "magnitude", "activation")

# name -> QuantConfig fields.  Order is the default order of the table's columns.
FORMATS: dict[str, dict[str, Any]] = {
    "int4-g128": {"method": "int4", "group_size": 128},
    "int4-g64": {"method": "int4", "group_size": 64},
    "int4-g32": {"method": "int4", "group_size": 32},
    "int3-g128": {"method": "int4", "bits": 3, "group_size": 128},
    "int3-g64": {"method": "int4", "bits": 3, "group_size": 64},
    "int3-g32": {"method": "int4", "bits": 3, "group_size": 32},
    "ternary-absmean": {"method": "ternary", "scale": "absmean"},
    "ternary-absmedian": {"method": "ternary", "scale": "absmedian"},
}
# The table's default columns: int3 is measured when asked for (or by a size budget that may choose it).
DEFAULT_FORMATS = tuple(f for f in FORMATS if not f.startswith("int3"))
# Group sizes tried, largest first, when the named one does not fit a module; -1 is per channel.
_FALLBACK_GROUPS = (128, 64, 32, 16, -1)


@dataclass(frozen=True)
class SensitivityConfig:
    """What a sensitivity pass measures and on how much text.

    ``metric``: ``"module-error"`` (relative error of the changed module's own
    output, from input Gram matrices: seconds), ``"layer-error"`` (relative
    change of the decoder layer's output, the layer re-run once per entry:
    about ``len(formats) * modules per layer`` model forwards in all) or
    ``"kl"`` (KL divergence of the model's output distributions to the
    unmodified model's, one full forward per entry: the slowest and the most
    faithful).  ``formats``: names from ``FORMATS``.  ``prune_fraction``: the
    share of each layer's MLP channels and of its kv groups removed (by
    ``importance``) to measure pruning.  ``sequences`` windows of ``seq_len``
    tokens (None: the data's length) are drawn from the calibration data with
    a private generator seeded by ``seed``.
    """

    metric: str = "layer-error"
    formats: tuple[str, ...] = DEFAULT_FORMATS
    prune_fraction: float = 0.5
    importance: str = "taylor"
    sequences: int = 4
    seq_len: int | None = None
    batch_size: int = 4
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}.")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"importance must be one of {', '.join(IMPORTANCES)}, got {self.importance!r}.")
        formats = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        object.__setattr__(self, "formats", formats)
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise ConfigError(f"unknown quantisation format(s) {unknown}; use some of {', '.join(FORMATS)}.")
        if not formats or len(set(formats)) != len(formats):
            raise ConfigError(f"formats must name at least one format, each once, got {list(formats)}.")
        p = self.prune_fraction
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
            raise ConfigError(f"prune_fraction must be a fraction between 0 and 1 (exclusive), got {p!r}.")
        for name in ("sequences", "batch_size"):
            _positive_int(name, getattr(self, name), 1)
        if self.seq_len is not None:
            _positive_int("seq_len", self.seq_len, 2)


def _positive_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")


def resolve_config(config: SensitivityConfig | None, changes: dict[str, Any]) -> SensitivityConfig:
    """A config from ``config`` (default: the defaults) with keyword ``changes`` applied."""
    base = config if config is not None else SensitivityConfig()
    if not isinstance(base, SensitivityConfig):
        raise ConfigError(f"config must be a SensitivityConfig, got {type(base).__name__}.")
    try:
        return replace(base, **changes) if changes else base
    except TypeError as err:  # an unknown keyword
        raise ConfigError(f"{err}; see SensitivityConfig for the options.") from None


def format_config(fmt: str, out_features: int, in_features: int) -> QuantConfig | None:
    """The ``QuantConfig`` that quantises an ``[out, in]`` weight as format ``fmt``, or None if none can.

    int4 keeps the named group size when the packed format accepts it for this
    shape, else takes the largest smaller one that it accepts (per channel last).
    """
    fields = FORMATS[fmt]
    spec = get_format(packed_name(fields))
    if not spec.grouped:
        if spec.shape_problem(out_features, in_features):
            return None
        return QuantConfig(**fields, progress=False)
    named = fields["group_size"]
    for group in (named,) + tuple(g for g in _FALLBACK_GROUPS if g == -1 or g < named):
        if spec.shape_problem(out_features, in_features, group) is None:
            return QuantConfig(**{**fields, "group_size": group}, progress=False)
    return None


def override_fields(cfg: QuantConfig) -> dict[str, Any]:
    """The field changes that select ``cfg``'s quantiser in a ``QuantConfig.overrides`` entry."""
    if isinstance(cfg, TernaryConfig):
        return {"method": "ternary", "scale": cfg.scale}
    return {"method": "int4", "bits": cfg.bits, "group_size": cfg.group_size}


def packed_name(fields: dict[str, Any]) -> str:
    """The packed format (``compress.kernels.formats``) a ``FORMATS`` entry's fields store in."""
    return packed_method_of(fields["method"], fields.get("bits", 4))
