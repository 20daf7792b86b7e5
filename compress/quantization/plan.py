"""Which modules get quantised, with which config, and whether they can be: decided before any weight changes.

``make_plan`` walks the model once: every ``nn.Linear`` is either a target
(with the config that applies to it) or skipped with a reason.  It then checks
every target against the packed formats and raises ONE ``QuantError`` that
lists every offender with its shape and the fixes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from torch import nn

from compress.kernels.formats import INT4_PER_WORD, get_format
from compress.quantization.config import OUTPUT_HEAD, QuantConfig, QuantError, name_matches
from compress.quantization.linear import QuantLinear
from compress.quantization.qat import FakeQuantLinear
from compress.quantization.quantizers import effective_group_size


@dataclass
class Target:
    name: str
    module: nn.Linear
    config: QuantConfig
    from_qat: bool = False  # a FakeQuantLinear: converted with the config it was trained with


@dataclass
class Plan:
    targets: list[Target] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)


def make_plan(model: nn.Module, config: QuantConfig, *, qat_only: bool = False) -> Plan:
    """Targets and skipped modules of ``model`` under ``config``; raises if any target cannot be packed.

    ``qat_only``: convert the ``FakeQuantLinear`` modules only (each with its
    own config) and leave plain ``nn.Linear`` modules alone.
    """
    plan, already, mismatched = Plan(), [], []
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = _output_head(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            plan.skipped.append((name, "embedding (never converted)"))
            continue
        if not isinstance(module, (nn.Linear, QuantLinear)):
            continue
        keep = _kept_because(name, module, head, config)
        cfg = None if keep else config.for_module(name)
        if keep is None and cfg is None:
            keep = "an override keeps it in full precision"
        if isinstance(module, QuantLinear):
            if keep or qat_only:
                plan.skipped.append((name, "already quantised"))
            else:
                already.append(f"{name} ({module.label()})")
            continue
        if id(module.weight) in embedding_ids:
            plan.skipped.append((name, "tied to the input embeddings (quantising it would untie them)"))
            continue
        if isinstance(module, FakeQuantLinear):
            if keep:
                plan.skipped.append((name, f"{keep}; left fake-quantised"))
            elif not qat_only and cfg.quantiser_key() != module.qconfig.quantiser_key():
                mismatched.append(f"{name} (trained as {module.qconfig.label()}, asked for {cfg.label()})")
            else:
                plan.targets.append(Target(name, module, module.qconfig, from_qat=True))
            continue
        if keep or qat_only:
            plan.skipped.append((name, keep or "not fake-quantised (only QAT modules are converted)"))
            continue
        plan.targets.append(Target(name, module, cfg))
    if already:
        raise QuantError(
            f"{_count(already, 'module is', 'modules are')} already quantised: {', '.join(already)}; "
            f"quantise the float model instead, or keep them with modules_to_not_convert."
        )
    if mismatched:
        raise QuantError(
            f"{_count(mismatched, 'module was', 'modules were')} trained with another quantiser than the one "
            f"asked for: {', '.join(mismatched)}; call quantize(model) without a config to convert them as trained."
        )
    validate(plan.targets)
    return plan


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _output_head(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    try:
        return getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        return None


def _kept_because(name: str, module: nn.Module, head: nn.Module | None, config: QuantConfig) -> str | None:
    for pattern in config.modules_to_not_convert:
        if pattern == OUTPUT_HEAD and module is head:
            return "output head (modules_to_not_convert)"
        if name_matches(name, pattern):
            return f"matches {pattern!r} in modules_to_not_convert"
    return None


# --------------------------------------------------------------------------- validation

def shape_problem(out_features: int, in_features: int, cfg: QuantConfig) -> str | None:
    """Why an ``[out, in]`` weight cannot be packed under ``cfg``, or None.

    Only packing constrains the shape: int4 needs in_features a multiple of 8,
    int3 of 32, ternary of 16.  A group size need not divide in_features (the last group
    is partial, compress.kernels.formats); the config already checked that it
    is a power of two.
    """
    K = in_features
    spec = get_format(cfg.packed_method)
    if K % spec.per_word:
        return f"{cfg.packed_method} packing needs in_features to be a multiple of {spec.per_word}"
    problem = spec.shape_problem(out_features, K, effective_group_size(cfg, K))
    return problem.rstrip(".") if problem else None


def validate(targets: Iterable[Target]) -> None:
    """Raise one ``QuantError`` naming every target that cannot be packed, with shapes and fixes."""
    targets = list(targets)
    bad = [(t, p) for t in targets if (p := shape_problem(t.module.out_features, t.module.in_features, t.config))]
    if not bad:
        return
    listed = _listing(bad)
    names = _short_names([t.name for t, _ in bad], [t.name for t in targets])
    fixes = [f"keep them in full precision with modules_to_not_convert={names}"]
    int4_ok = [t.name for t, _ in bad if t.module.in_features % INT4_PER_WORD == 0]
    if int4_ok:  # ternary offenders that int4 can pack
        short = _short_names(int4_ok, [t.name for t in targets])
        key = short[0] if len(short) == 1 else ".*(" + "|".join(short) + ")"
        fixes.append(f"quantise them to int4 instead with overrides={{{key!r}: 'int4'}}")
    multiple = max(get_format(t.config.packed_method).per_word for t, _ in bad)
    fixes.append(f"prune their in_features to a multiple of {multiple}")
    raise QuantError(
        f"{_count(bad, 'module cannot', 'modules cannot')} be quantised as asked: {listed}; "
        f"fix: {', or '.join(fixes)}."
    )


def _listing(bad: list[tuple[Target, str]]) -> str:
    """Every offender with shape and problem; layers alike are folded: ``model.layers.{0-29}.mlp.up_proj``."""
    groups: dict[tuple, list[int]] = {}
    for t, problem in bad:
        m = re.fullmatch(r"(.*?\.)(\d+)(\..*)", t.name)
        pattern, index = ((m.group(1), m.group(3)), int(m.group(2))) if m else ((t.name, ""), -1)
        key = (pattern, t.module.out_features, t.module.in_features, t.config.label(), problem)
        groups.setdefault(key, []).append(index)
    out = []
    for ((head, tail), n_out, n_in, label, problem), indices in groups.items():
        name = head if indices == [-1] else f"{head}{_ranges(indices) if len(indices) > 1 else indices[0]}{tail}"
        out.append(f"{name} [{n_out}, {n_in}] ({label}: {problem})")
    return ", ".join(out)


def _ranges(indices: list[int]) -> str:
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return "{" + ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) + "}"


def _short_names(bad: list[str], all_targets: list[str]) -> list[str]:
    """The last name component when every target ending in it is an offender, else the full name."""
    out: list[str] = []
    for name in bad:
        leaf = name.rsplit(".", 1)[-1]
        short = leaf if all(n in bad for n in all_targets if n.rsplit(".", 1)[-1] == leaf) else name
        if short not in out:
            out.append(short)
    return out


def _count(items: list, one: str, many: str) -> str:
    return f"1 {one}" if len(items) == 1 else f"{len(items)} {many}"
