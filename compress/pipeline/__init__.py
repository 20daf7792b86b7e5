"""Recipes: the whole pipeline (prune, recover, quantize, export) with a pre-flight check, resumption and a report.

    import compress
    report = compress.run("smollm2-135m", "default", "runs/demo")     # or a YAML file, a Recipe, a list of stages
    print(report.table())

Files: ``stages.py`` (Prune / Recover / Quantize / Export around the config
dataclasses), ``recipe.py`` (Recipe, YAML, built-in recipes in
``recipes/``), ``preflight.py`` (the whole recipe against the model before
any work), ``memory.py`` (the memory estimate), ``rundir.py`` (stage
directories, fingerprints, what is done), ``runner.py`` (``run``),
``exporting.py`` (the bridge to ``compress.io.exports``), ``report.py``
(RunReport: tables, Markdown, JSON, charts).
"""
from compress.pipeline.preflight import PreflightError, PreflightReport, preflight
from compress.pipeline.recipe import EvalSettings, Recipe, builtin_recipes, load_recipe
from compress.pipeline.report import RunReport
from compress.pipeline.rundir import RunDirError
from compress.pipeline.runner import check, run
from compress.pipeline.stages import STAGE_KINDS, Export, Prune, Quantize, RecipeError, Recover

__all__ = [
    "STAGE_KINDS",
    "EvalSettings",
    "Export",
    "PreflightError",
    "PreflightReport",
    "Prune",
    "Quantize",
    "Recipe",
    "RecipeError",
    "Recover",
    "RunDirError",
    "RunReport",
    "builtin_recipes",
    "check",
    "load_recipe",
    "preflight",
    "run",
]
