"""Per-module override maps: which modules to keep at higher precision, which layers not to prune.

A map is YAML a recipe can use, in exactly the shape ``QuantConfig`` and
``PruneConfig`` take::

    quantize:
      overrides:                       # first matching key wins (QuantConfig.overrides)
        model.layers.3.mlp.down_proj: {method: int4, group_size: 32}
      modules_to_not_convert: [lm_head, model.layers.0.self_attn.v_proj]
    prune:
      protect_layers: [0, 29]          # layers kept at full width

``load_override_map(path)`` reads one back, validated, as keyword arguments.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from compress.errors import ConfigError
from compress.kernels.formats import get_format
from compress.quantization.config import OUTPUT_HEAD, QuantConfig
from compress.sensitivity.config import FORMATS, format_config, override_fields, packed_name

if TYPE_CHECKING:
    from compress.sensitivity.report import ModuleRow, SensitivityReport

FULL_PRECISION = ("full", "none", "fp")  # spellings of "keep it unquantised" for promote_to


def build_override_map(
    report: "SensitivityReport",
    target: str | None = None,
    keep: float = 0.1,
    promote_to: str | None = None,
    protect: int | None = None,
) -> dict[str, Any]:
    """The override map for quantising with ``target`` and pruning, from one budget.

    ``keep``: the fraction of modules, most sensitive under ``target`` first,
    kept at higher precision: full precision (``promote_to`` None or
    ``"full"``) or the format ``promote_to``.  Modules ``target`` cannot pack
    stay in full precision; those it packs only at another group size get that
    group size.  ``protect``: how many layers, most sensitive to pruning first,
    keep their full width (default: the same fraction ``keep`` of the layers).
    """
    fmt = check_override_args(report.formats, target, keep, promote_to, protect)
    promote = _promotion(promote_to, fmt)
    _check_more_precise(report, promote, fmt)
    n_layers = len(report.layers)
    protect = _share(keep, n_layers) if protect is None else min(protect, n_layers)

    ranked = [m for m in report.ranking(fmt) if m.errors[fmt] is not None]
    promoted = ranked[: _share(keep, len(ranked))]
    overrides: dict[str, Any] = {}
    not_convert = [OUTPUT_HEAD]
    for m in promoted:
        cfg = format_config(promote, *m.shape) if promote else None
        if cfg is None:
            not_convert.append(m.name)
        else:
            overrides[m.name] = override_fields(cfg)
    not_convert += [m.name for m in report.modules if m.errors[fmt] is None]
    overrides.update(_refits(report, fmt, {m.name for m in promoted}))

    by_pruning = sorted(report.layers, key=lambda r: r.prune_error, reverse=True)
    protected = sorted(r.layer for r in by_pruning[:protect])
    result = {
        "quantize": {"overrides": overrides, "modules_to_not_convert": not_convert},
        "prune": {"protect_layers": protected},
    }
    validate_override_map(result, "the override map")
    return result


def check_override_args(
    formats: list[str] | tuple[str, ...], target: str | None, keep: float, promote_to: str | None, protect: int | None
) -> str:
    """Check the override-map settings against the measured ``formats`` (before measuring); returns the target."""
    fmt = target or formats[0]
    if fmt not in formats:
        raise ConfigError(f"target format {fmt!r} was not measured; measure it too, or use one of {', '.join(formats)}.")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 <= keep <= 1.0:
        raise ConfigError(f"keep must be a fraction of the modules between 0 and 1, got {keep!r}.")
    if protect is not None and (isinstance(protect, bool) or not isinstance(protect, int) or protect < 0):
        raise ConfigError(f"protect must be a whole number of layers >= 0, got {protect!r}.")
    _promotion(promote_to, fmt)
    return fmt


def write_override_map(
    report: "SensitivityReport",
    path: str | Path,
    target: str | None = None,
    keep: float = 0.1,
    promote_to: str | None = None,
    protect: int | None = None,
) -> Path:
    """Write ``build_override_map(...)`` to ``path`` as YAML, with a header saying how it was made."""
    from compress.io.atomic import write_text

    fmt = check_override_args(report.formats, target, keep, promote_to, protect)
    data = build_override_map(report, fmt, keep, promote_to, protect)
    protected = data["prune"]["protect_layers"]
    least = [r.layer for r in sorted(report.layers, key=lambda r: r.prune_error)[: max(len(protected), 3)]]
    kept = len(data["quantize"]["modules_to_not_convert"]) - 1
    header = [
        "# compress-lm sensitivity override map",
        f"# model: {report.model}; metric: {report.metric} on {report.sequences} x {report.seq_len} tokens",
        f"# quantise with {fmt}; the {keep:.0%} most sensitive modules go to "
        f"{_promotion(promote_to, fmt) or 'full precision'} ({kept} module(s) kept unquantised in all)",
        f"# pruning: protect_layers are the {len(protected)} layer(s) hurt most by removing "
        f"{report.prune_fraction:.0%} of their width; least hurt (prune these more): {least}",
        "# read with compress.sensitivity.load_override_map(path) -> {'quantize': {...}, 'prune': {...}}",
    ]
    text = "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=200)
    return write_text(path, text)


def load_override_map(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read an override map: ``{"quantize": {...}, "prune": {...}}``, each ready as config keyword arguments.

    Only the keys the file sets are returned (so a map without
    ``modules_to_not_convert`` leaves QuantConfig's default, the LM head, in
    place).  Sequences come back as tuples.  Raises ``ConfigError`` naming the
    file and what is wrong.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"Override map '{path}' does not exist; write one with "
            "`compress-lm sensitivity MODEL --overrides PATH` or SensitivityReport.write_override_map."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0][:200]
        raise ConfigError(f"Override map '{path}' is not valid YAML ({first}); fix or regenerate it.") from None
    except RecursionError:
        raise ConfigError(f"Override map '{path}' is nested too deeply to read; fix or regenerate it.") from None
    data = {} if data is None else data
    validate_override_map(data, f"Override map '{path}'")
    quant = dict(data.get("quantize") or {})
    if "modules_to_not_convert" in quant:
        quant["modules_to_not_convert"] = tuple(quant["modules_to_not_convert"])
    prune = dict(data.get("prune") or {})
    if "protect_layers" in prune:
        prune["protect_layers"] = tuple(prune["protect_layers"])
    return {"quantize": quant, "prune": prune}


def validate_override_map(data: Any, where: str) -> None:
    """Raise ``ConfigError`` unless ``data`` is a well-formed override map."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping with 'quantize' and/or 'prune', got {type(data).__name__}.")
    _known(data, {"quantize", "prune"}, where)
    quant = data.get("quantize") or {}
    if not isinstance(quant, dict):
        raise ConfigError(f"{where}: 'quantize' must be a mapping, got {type(quant).__name__}.")
    _known(quant, {"overrides", "modules_to_not_convert"}, f"{where}: 'quantize'")
    keep = quant.get("modules_to_not_convert", [OUTPUT_HEAD])
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise ConfigError(f"{where}: 'quantize.modules_to_not_convert' must be a list of module names or regexes.")
    try:  # QuantConfig's own checks: patterns compile, override fields exist and make a valid config
        QuantConfig(overrides=quant.get("overrides") or {}, modules_to_not_convert=tuple(keep), progress=False)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    prune = data.get("prune") or {}
    if not isinstance(prune, dict):
        raise ConfigError(f"{where}: 'prune' must be a mapping, got {type(prune).__name__}.")
    _known(prune, {"protect_layers"}, f"{where}: 'prune'")
    layers = prune.get("protect_layers", [])
    ok = isinstance(layers, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
    if not ok or len(set(layers)) != len(layers):
        raise ConfigError(f"{where}: 'prune.protect_layers' must be a list of distinct layer indices >= 0, got {layers!r}.")
    _check_prune_config(layers, where)


def _check_prune_config(layers: list[int], where: str) -> None:
    """Let PruneConfig validate protect_layers too, once it has that field."""
    from compress.pruning.config import PruneConfig

    if layers and "protect_layers" in {f.name for f in dataclasses.fields(PruneConfig)}:
        try:
            PruneConfig(protect_layers=tuple(layers))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


def _known(d: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed, key=str)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; allowed are {sorted(allowed)}.")


def _promotion(promote_to: str | None, target: str) -> str | None:
    """The format to promote to (None: full precision), checked."""
    if promote_to is None or promote_to.lower() in FULL_PRECISION:
        return None
    if promote_to not in FORMATS:
        raise ConfigError(
            f"promote_to {promote_to!r} is not a format; use 'full' or one of {', '.join(FORMATS)}."
        )
    if promote_to == target:
        raise ConfigError(f"promote_to is the target format {target!r} itself; pick a more precise one or 'full'.")
    return promote_to


def _check_more_precise(report: "SensitivityReport", promote: str | None, target: str) -> None:
    """When both formats were measured, the promoted one must have the lower mean error."""
    if promote is None or promote not in report.formats:
        return

    def mean(fmt: str) -> float:
        both = [m.errors for m in report.modules if m.errors[fmt] is not None and m.errors[target] is not None]
        return sum(e[fmt] for e in both) / max(len(both), 1)

    if mean(promote) >= mean(target):
        raise ConfigError(
            f"promote_to {promote!r} measured no more precise than the target {target!r} "
            f"(mean error {mean(promote):.3g} vs {mean(target):.3g}); promote to a finer format or 'full'."
        )


def _share(fraction: float, n: int) -> int:
    """``fraction`` of ``n`` items, at least one when the fraction is positive."""
    return min(n, math.ceil(fraction * n - 1e-9)) if fraction > 0 else 0


def _refits(report: "SensitivityReport", fmt: str, promoted: set[str]) -> dict[str, Any]:
    """Overrides giving the modules that ``fmt`` packs only at another group size that group size.

    A module path that needs the same change in every layer becomes one regex
    (``model\\.layers\\.\\d+\\.self_attn\\.o_proj``); the rest are listed by name.
    """
    if not get_format(packed_name(FORMATS[fmt])).grouped:
        return {}
    named = FORMATS[fmt]["group_size"]
    needs: dict[tuple[str, int], list[ModuleRow]] = {}
    for m in report.modules:
        g = m.group_sizes.get(fmt)
        if m.name not in promoted and g is not None and g != named:
            needs.setdefault((m.module, g), []).append(m)
    out: dict[str, Any] = {}
    for (path, group), rows in needs.items():
        every = [m for m in report.modules if m.module == path and m.name not in promoted]
        fields = {"group_size": group}
        if len(rows) == len(every) and len(rows) > 1:
            out[rf"{re.escape(report.layers_path)}\.\d+\.{re.escape(path)}"] = fields
        else:
            out.update({m.name: dict(fields) for m in rows})
    return out
