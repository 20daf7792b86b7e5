"""Downstream tasks through lm-evaluation-harness (``lm-eval``), on the model as compress-lm holds it.

lm-eval's ``HFLM`` wraps the model object itself (packed int4 / ternary
modules, per-layer widths and all), so the scores are those of the
compressed model, not of a re-loaded export.  ``lm-eval`` is an optional
extra: ``pip install 'compress-lm[tasks]'``.

    from compress.tasks import TaskConfig, run_tasks
    scores = run_tasks(model, tokenizer, ["arc_easy", "hellaswag"], TaskConfig(limit=100))

Tasks are lm-eval's own (most read their data from the Hugging Face Hub, so
they need internet once; the ``datasets`` cache serves them afterwards) or
YAML files in a directory given as ``include_path``.  tests/lmeval_tasks/
holds two that need no download: a multiple-choice one and a rolling
log-likelihood (perplexity) one over the news text compress-lm ships.
"""
from __future__ import annotations

import difflib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from compress.errors import CompressError, ConfigError

__all__ = ["TaskConfig", "TaskError", "TaskRunner", "TaskScore", "run_tasks", "split_task_names", "task_table"]

INSTALL_HINT = "pip install 'compress-lm[tasks]' (or pip install lm-eval)"
# datasets builders that read local files rather than a Hub repository
_LOCAL_BUILDERS = {"json", "csv", "text", "parquet", "arrow", "pandas", "imagefolder", "audiofolder", "webdataset"}


class TaskError(CompressError):
    """An lm-eval task that cannot be run here."""


@dataclass(frozen=True)
class TaskConfig:
    """How lm-eval runs the tasks.

    ``include_path``: a directory of task YAML files (searched besides lm-eval's
    own); ``limit``: documents per task (an int, or a fraction in (0, 1));
    ``num_fewshot``: few-shot examples (None: each task's default, usually 0);
    ``batch_size``: requests per forward pass; ``bootstrap_iters``: draws for
    the standard errors that have no closed form (0: none).
    """

    include_path: str | None = None
    limit: int | float | None = None
    num_fewshot: int | None = None
    batch_size: int = 1
    bootstrap_iters: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and not (
            (isinstance(self.limit, int) and self.limit >= 1) or (isinstance(self.limit, float) and 0 < self.limit < 1)
        ):
            raise ConfigError(f"limit must be a whole number of documents >= 1 or a fraction between 0 and 1, got {self.limit!r}.")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"num_fewshot must be 0 or more, got {self.num_fewshot}.")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.bootstrap_iters < 0:
            raise ConfigError(f"bootstrap_iters must be 0 or more, got {self.bootstrap_iters}.")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise TaskError(f"The task directory '{self.include_path}' does not exist or is not a directory; "
                            f"give --include-path a directory that holds lm-eval task YAML files.")


@dataclass
class TaskScore:
    """One metric of one task: the model's value, and the reference's when there is one."""

    task: str
    metric: str
    model: float | None
    model_stderr: float | None = None
    reference: float | None = None
    reference_stderr: float | None = None
    samples: int | None = None
    higher_is_better: bool | None = None


def split_task_names(text: str | Sequence[str]) -> list[str]:
    """``"a,b, c"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]``; empty names are refused."""
    parts = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for p in parts for n in str(p).split(",")]
    if not names or any(not n for n in names):
        raise TaskError(f"The task list {text!r} has an empty name; give names separated by commas, e.g. --tasks arc_easy,hellaswag.")
    return list(dict.fromkeys(names))


def _import_lm_eval() -> Any:
    try:
        import lm_eval  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as err:
        raise TaskError(f"Running lm-eval tasks needs the lm-eval package, which is not installed; install it with {INSTALL_HINT}.") from err
    import lm_eval

    return lm_eval


def _task_manager(names: list[str], include_path: str | None) -> Any:
    """lm-eval's index: only the include path when it has every name (fast), else lm-eval's ~15k tasks too."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(n in local.all_tasks for n in names):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [n for n in names if n not in manager.all_tasks and not _is_task_file(n)]
    if unknown:
        raise TaskError(_unknown_message(unknown, manager.all_tasks, include_path))
    return manager


def _is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


def _unknown_message(unknown: list[str], known: list[str], include_path: str | None) -> str:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
        hints.append(f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    where = f"lm-eval's tasks or {include_path}" if include_path else "lm-eval's tasks"
    return (f"Unknown lm-eval task {', '.join(hints)}: not among {where}; list the names with "
            f"`lm-eval ls tasks`, or put a task YAML in a directory and pass it with --include-path DIR.")


def _dataset_path(manager: Any, name: str) -> str | None:
    entry = manager.task_index.get(name) if hasattr(manager, "task_index") else None
    cfg = getattr(entry, "cfg", None) or {}
    return cfg.get("dataset_path") if isinstance(cfg, dict) else None


def _load_tasks(manager: Any, names: list[str]) -> list[Any]:
    """Build each task (reading its data); a task whose data cannot be read is named with the fix."""
    tasks: list[Any] = []
    for name in names:
        try:
            loaded = manager.load([name])
        except Exception as err:  # noqa: BLE001 - lm-eval and datasets raise many kinds; each becomes one sentence
            raise _load_error(manager, name, err) from err
        tasks.extend(loaded["tasks"].values())
    return tasks


def _load_error(manager: Any, name: str, err: Exception) -> TaskError:
    cause = " ".join(str(err).split())[:200] or type(err).__name__
    path = _dataset_path(manager, name)
    if path and path not in _LOCAL_BUILDERS and not Path(path).exists():
        return TaskError(
            f"lm-eval task '{name}' needs its dataset '{path}' from the Hugging Face Hub, which could not be read here "
            f"({cause}); run it once on a machine with internet (the datasets cache then serves it offline), or copy "
            f"the data here and point a task YAML at it (dataset_path: json, dataset_kwargs: data_files: ...) "
            f"passed with --include-path DIR.")
    return TaskError(f"lm-eval could not build task '{name}' ({cause}); check the task's YAML and its data files.")


def _quiet_lm_eval() -> None:
    # lm-eval logs every request batch at INFO/WARNING; compress-lm prints its own table.
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _model_wrapper(model: Any, tokenizer: Any, config: TaskConfig) -> Any:
    from lm_eval.models.huggingface import HFLM

    if tokenizer is None:
        raise TaskError("Running lm-eval tasks needs the model's tokenizer; pass tokenizer= (compress.load_model returns it).")
    max_length = getattr(model.config, "max_position_embeddings", None)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size,
                max_length=min(max_length, 8192) if max_length else None)


def _scores(results: dict[str, Any], names: list[str]) -> dict[tuple[str, str], tuple[float | None, float | None, int | None, bool | None]]:
    """lm-eval's ``results`` -> {(task, metric): (value, stderr, samples, higher_is_better)}."""
    out = {}
    per_task = results.get("results", {})
    higher = results.get("higher_is_better", {})
    n_samples = results.get("n-samples", {})
    for task in sorted(per_task):
        for key, value in per_task[task].items():
            if key in ("alias", "sample_len") or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            stderr = per_task[task].get(f"{metric}_stderr,{filt}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
            samples = n_samples.get(task, {}).get("effective")
            out[(task, metric)] = (float(value), stderr, samples, higher.get(task, {}).get(metric))
    return out


def _evaluate_one(model: Any, tokenizer: Any, tasks: list[Any], config: TaskConfig, manager: Any) -> dict:
    from lm_eval import simple_evaluate

    lm = _model_wrapper(model, tokenizer, config)
    was_training = model.training
    model.eval()
    try:
        results = simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, num_fewshot=config.num_fewshot, limit=config.limit,
            bootstrap_iters=config.bootstrap_iters, log_samples=False, random_seed=config.seed,
            numpy_random_seed=config.seed, torch_random_seed=config.seed, fewshot_random_seed=config.seed,
        )
    finally:
        model.train(was_training)
    if results is None:
        raise TaskError("lm-eval returned no results (this process is not its rank 0); run compress-lm on one process.")
    return results


class TaskRunner:
    """lm-eval tasks prepared for running: constructing it checks, before any model runs, that lm-eval
    is installed, that every name is a task, and that every task's data can be read."""

    def __init__(self, tasks: str | Sequence[str], config: TaskConfig | None = None) -> None:
        self.config = config or TaskConfig()
        self.names = split_task_names(tasks)
        _import_lm_eval()
        _quiet_lm_eval()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.manager = _task_manager(self.names, self.config.include_path)
        self._built = _load_tasks(self.manager, self.names)

    def _tasks(self) -> list[Any]:
        built, self._built = self._built, None
        return built if built is not None else _load_tasks(self.manager, self.names)  # fresh objects per model

    def run(self, model: Any, tokenizer: Any, reference: Any = None) -> list[TaskScore]:
        """One ``TaskScore`` per task and metric; the reference (same tokenizer) on the same documents."""
        ours = _scores(_evaluate_one(model, tokenizer, self._tasks(), self.config, self.manager), self.names)
        theirs = {}
        if reference is not None:
            theirs = _scores(_evaluate_one(reference, tokenizer, self._tasks(), self.config, self.manager), self.names)
        rows = []
        for (task, metric), (value, stderr, samples, hib) in ours.items():
            ref = theirs.get((task, metric), (None, None, None, None))
            rows.append(TaskScore(task, metric, value, stderr, ref[0], ref[1], samples, hib))
        return rows


def run_tasks(
    model: Any,
    tokenizer: Any,
    tasks: str | Sequence[str],
    config: TaskConfig | None = None,
    reference: Any = None,
) -> list[TaskScore]:
    """Run lm-eval ``tasks`` on ``model`` (and on ``reference`` when given, with the same tokenizer).

    Returns one ``TaskScore`` per task and metric.  Raises ``TaskError`` with
    one sentence for lm-eval missing, an unknown task, or a task whose data
    cannot be read here (most of lm-eval's need a download).
    """
    return TaskRunner(tasks, config).run(model, tokenizer, reference)


def task_table(scores: Sequence[TaskScore], model_name: str = "model", reference_name: str | None = None) -> str:
    """A plain-text table of task scores, model beside reference."""
    header = ["task", "metric", model_name] + ([reference_name] if reference_name else []) + ["n"]
    body = []
    for s in scores:
        row = [s.task, s.metric, _value(s.model, s.model_stderr)]
        if reference_name:
            row.append(_value(s.reference, s.reference_stderr))
        row.append("-" if s.samples is None else str(s.samples))
        body.append(row)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)])


def _value(v: float | None, se: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" + (f" ± {se:.4f}" if se is not None else "")
