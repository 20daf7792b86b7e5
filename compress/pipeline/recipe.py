"""``Recipe``: a model, its text, how to evaluate, and the list of stages; read from YAML or built in Python.

    name: my-recipe
    model: smollm2-135m            # built-in name, HF directory, .gguf file or hub id
    data: null                     # null = the default text (see compress.data.default_source); or files /
                                   # directories, a named text (generated, shakespeare), or a mix with shares:
                                   # {generated: 0.5, notes/: 0.5}
    generate: {tokens: 8192}       # optional: how "generated" text is written (compress.generated.GenerateConfig)
    text: {seq_len: 256, seed: 0}  # TextConfig fields
    eval: {sequences: 16, batch_size: 4, data: [my-eval.txt]}   # data: your own evaluation text, a third domain
    override_map: sensitivity.yaml # optional: `compress-lm sensitivity --overrides`' map, merged into the stages
    stages:
      - prune: {sparsity: 0.2, round_to: 64}
      - recover: {steps: 100, batch_size: 4}
      - quantize: {method: int4, group_size: 64}
      - export: [native, hf]

Built-in recipes live beside this file in ``recipes/<name>.yaml``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from compress.data import TextConfig
from compress.generated import GenerateConfig
from compress.errors import CompressError, ConfigError, quote, shorten
from compress.models import DEFAULT_MODEL
from compress.pipeline.stages import (
    Export,
    Prune,
    Quantize,
    RecipeError,
    Stage,
    StageLike,
    _plain,
    build_config,
    as_stage,
    stage_options,
)

DTYPES = ("float32", "bfloat16", "float16")
_TOP_KEYS = ("name", "description", "model", "data", "generate", "text", "eval", "device", "dtype", "override_map", "stages")


@dataclass(frozen=True)
class EvalSettings:
    """How every stage is measured: the first ``sequences`` held-out sequences of each domain, ``batch_size`` at a time.

    The domains: the calibration text's held-out split, the built-in Shakespeare
    text (when the calibration text is another), the unseen built-in "news" text,
    and ``data``: the user's own evaluation files, if given.
    """

    sequences: int = 16
    batch_size: int = 4
    data: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            object.__setattr__(self, "data", (str(self.data),))
        elif self.data is not None:
            if not isinstance(self.data, (list, tuple)) or not self.data:
                raise ConfigError(f"eval data must be a list of text files or directories, got {quote(self.data)}.")
            object.__setattr__(self, "data", tuple(str(d) for d in self.data))
        for name in ("sequences", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"eval {name} must be an integer >= 1, got {quote(value)}.")


@dataclass(frozen=True)
class Recipe:
    """What ``compress.run`` carries out, stage after stage.

    ``stages`` holds ``Prune`` / ``Recover`` / ``Quantize`` / ``Export``
    stages, or the bare ``PruneConfig`` / ``RecoverConfig`` / ``QuantConfig``
    (and quantisation shorthands such as ``"int4"``), which are wrapped.
    ``data`` None is the built-in text.  ``device`` None is CUDA when there is
    one, else the CPU.  ``override_map``: a sensitivity override map (YAML,
    ``compress.sensitivity``) whose ``quantize`` keys (``overrides``,
    ``modules_to_not_convert``) replace those of every quantize stage and
    whose ``prune`` keys (``protect_layers``) those of every prune stage.
    """

    stages: tuple[Stage, ...]
    model: str = DEFAULT_MODEL
    data: tuple[str, ...] | None = None
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    text: TextConfig = field(default_factory=lambda: TextConfig(seq_len=256))
    eval: EvalSettings = field(default_factory=EvalSettings)
    device: str | None = None
    dtype: str = "float32"
    name: str = "custom"
    description: str = ""
    override_map: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stages, (str, bytes, Mapping)) or not isinstance(self.stages, Sequence):
            raise RecipeError(f"stages must be a list of stages, got {type(self.stages).__name__}.")
        stages = tuple(as_stage(s, f"stage {i + 1}") for i, s in enumerate(self.stages))
        if not stages:
            raise RecipeError("The recipe has no stages; list at least one of prune, recover, quantize, export.")
        object.__setattr__(self, "stages", stages)
        if isinstance(self.data, (str, Path)):
            object.__setattr__(self, "data", (str(self.data),))
        elif isinstance(self.data, Mapping):  # a mix with shares: {generated: 0.7, notes/: 0.3}
            object.__setattr__(self, "data", tuple(f"{k}={v}" for k, v in self.data.items()))
        elif self.data is not None:
            object.__setattr__(self, "data", tuple(str(d) for d in self.data))
        if self.data is not None:
            from compress.data import mix_parts

            try:
                mix_parts(list(self.data))  # shares that do not add up: said before anything loads
            except CompressError as err:
                raise RecipeError(f"In the recipe's data: {err}") from None
        if self.dtype not in DTYPES:
            raise RecipeError(f"dtype must be one of {', '.join(DTYPES)}, got {quote(self.dtype)}.")
        if not isinstance(self.model, str) or not self.model:
            raise RecipeError(f"model must be a built-in name, a path or a hub id, got {quote(self.model)}.")
        if self.override_map is not None:
            object.__setattr__(self, "stages", _with_override_map(stages, str(self.override_map)))

    @property
    def final_stages(self) -> tuple[Stage, ...]:
        """The stages that change the model (every one but export)."""
        return tuple(s for s in self.stages if not isinstance(s, Export))

    def to_dict(self) -> dict[str, Any]:
        """The YAML form, every option spelled out (``Recipe.from_dict`` reads it back)."""
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "data": list(self.data) if self.data is not None else None,
            "generate": _plain({k: v for k, v in dataclasses.asdict(self.generate).items() if k != "progress"}),
            "text": dataclasses.asdict(self.text),
            "eval": _plain(dataclasses.asdict(self.eval)),
            "device": self.device,
            "dtype": self.dtype,
            "override_map": self.override_map,
            "stages": [stage_options(s) for s in self.stages],
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "the recipe") -> "Recipe":
        if not isinstance(d, Mapping):
            raise RecipeError(f"{where} must be a mapping of {', '.join(_TOP_KEYS)}, got {type(d).__name__}.")
        unknown = set(d) - set(_TOP_KEYS)
        if unknown:
            raise RecipeError(
                f"Unknown key(s) {', '.join(quote(k, 60) for k in sorted(map(str, unknown))[:8])} in {where}; "
                f"allowed keys are: {', '.join(_TOP_KEYS)}."
            )
        if "stages" not in d:
            raise RecipeError(f"{where} has no stages; add a list such as stages: [{{quantize: int4}}].")
        check_shape(d, where)
        kw: dict[str, Any] = {k: v for k, v in d.items() if k not in ("text", "eval", "generate") and v is not None}
        try:
            if d.get("text") is not None:
                kw["text"] = build_config(TextConfig, _mapping(d["text"], "text"), f"the text section of {where}")
            if d.get("generate") is not None:
                kw["generate"] = build_config(GenerateConfig, _mapping(d["generate"], "generate"), f"the generate section of {where}")
            if d.get("eval") is not None:
                kw["eval"] = build_config(EvalSettings, _mapping(d["eval"], "eval"), f"the eval section of {where}")
            return cls(**kw)
        except RecipeError:
            raise
        except ConfigError as err:
            raise RecipeError(shorten(f"In {where}: {err}")) from None


def _with_override_map(stages: tuple[Stage, ...], path: str) -> tuple[Stage, ...]:
    """The stages with a sensitivity override map's quantize / prune keys in place of their own."""
    from compress.sensitivity.overrides import load_override_map

    try:
        overrides = load_override_map(path)
    except RecipeError:
        raise
    except ConfigError as err:
        raise RecipeError(str(err)) from None
    out = []
    for s in stages:
        changes = overrides["quantize"] if isinstance(s, Quantize) else overrides["prune"] if isinstance(s, Prune) else {}
        out.append(dataclasses.replace(s, config=dataclasses.replace(s.config, **changes)) if changes else s)
    return tuple(out)


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise RecipeError(f"The recipe's {key} section must be a mapping of options, got {type(value).__name__}.")
    return dict(value)


# -- built-in recipes and files ------------------------------------------------

def _recipe_files() -> dict[str, Any]:
    folder = resources.files("compress.pipeline") / "recipes"
    return {f.name[: -len(".yaml")]: f for f in folder.iterdir() if f.name.endswith(".yaml")}


def builtin_recipes() -> dict[str, str]:
    """Built-in recipe names with their one-line descriptions."""
    return {name: _parse(f.read_text("utf-8"), f"built-in recipe {name!r}").get("description", "")
            for name, f in sorted(_recipe_files().items())}


def load_recipe(source: "Recipe | Mapping[str, Any] | str | Path | Sequence[StageLike]") -> Recipe:
    """A ``Recipe`` from a recipe, a mapping, a YAML file, a built-in name or a list of stages."""
    if isinstance(source, Recipe):
        return source
    if isinstance(source, Mapping):
        return Recipe.from_dict(source)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        files = _recipe_files()
        if str(source) in files and not path.is_file():
            recipe = Recipe.from_dict(_parse(files[str(source)].read_text("utf-8"), f"built-in recipe {source!r}"),
                                      f"built-in recipe {source!r}")
            return recipe if recipe.name != "custom" else dataclasses.replace(recipe, name=str(source))
        if path.is_file():
            if path.stat().st_size > MAX_RECIPE_BYTES:
                raise RecipeError(f"Recipe file '{path}' has {path.stat().st_size:,} bytes, more than the "
                                  f"{MAX_RECIPE_BYTES:,} a recipe may have; give the recipe file, not a data file.")
            try:
                text = path.read_text("utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise RecipeError(f"Could not read recipe file '{path}' ({type(err).__name__}); give a UTF-8 YAML file.") from None
            d = _parse(text, f"recipe file '{path}'")
            if isinstance(d, Mapping) and "name" not in d:
                d = {**d, "name": path.stem}
            if isinstance(d, Mapping) and isinstance(d.get("override_map"), str):  # relative to the recipe file
                d = {**d, "override_map": str(path.parent / Path(d["override_map"]).expanduser())}
            return Recipe.from_dict(d, f"recipe file '{path}'")
        looks_like_path = path.suffix in (".yaml", ".yml") or "/" in str(source)
        what = f"Recipe file '{path}' does not exist" if looks_like_path else f"{quote(str(source))} is not a built-in recipe"
        raise RecipeError(f"{what}; give a YAML file or one of the built-in recipes: {', '.join(sorted(files))}.")
    if isinstance(source, Sequence):
        return Recipe(stages=tuple(source))
    raise RecipeError(
        f"A recipe is a Recipe, a mapping, a YAML file, a built-in name or a list of stages, not a {type(source).__name__}."
    )


MAX_RECIPE_BYTES = 1_000_000  # a recipe is a few hundred bytes; an override map a few thousand
MAX_DEPTH = 16  # recipe > stages > stage > options > recover options > a list: 6 deep
MAX_NODES = 20_000  # values counted as YAML aliases expand them


def check_shape(data: Any, where: str) -> None:
    """Refuse a recipe nested too deep or too large (an alias bomb expands to billions of values)."""
    stack, nodes = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise RecipeError(f"{where} is nested more than {MAX_DEPTH} levels deep; a recipe is a few levels of "
                              f"mappings and lists, fix it.")
        if nodes > MAX_NODES:
            raise RecipeError(f"{where} holds more than {MAX_NODES} values (counting what YAML aliases repeat); a recipe "
                              f"is far smaller, remove the repetition.")
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in (*value.keys(), *value.values()))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def _parse(text: str, where: str) -> Any:
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{where} has {len(text):,} characters, more than the {MAX_RECIPE_BYTES:,} a recipe may have; "
                          f"give the recipe file, not a data file.")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = shorten(str(getattr(err, "problem", None) or err), 200)
        raise RecipeError(f"{where} is not valid YAML{at} ({problem}); fix the syntax.") from None
    except RecursionError:
        raise RecipeError(f"{where} is nested too deeply to read; a recipe is a few levels of mappings and lists, "
                          f"fix it.") from None
    check_shape(data, where)
    return data
