"""Evaluation: held-out perplexity, agreement with a reference model, size, speed.

Causal LMs: perplexity of next-token prediction; against a reference, the mean
KL divergence KL(reference || model) of next-token distributions (nats per
token) and top-1 agreement.  Encoders (BERT): masked-LM loss when the model
has an MLM head, and the cosine similarity of mean-pooled embeddings to the
reference when it does not.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from compress.arch import is_causal_lm
from compress.data import TextSplits
from compress.errors import CompressError, ConfigError
from compress.reports import Report
from compress.sizes import bytes_in_memory, bytes_on_disk, count_parameters

_ROWS_PER_SLICE = 2048  # positions per log-softmax slice: bounds memory for big vocabularies


class EvalError(CompressError):
    """Evaluation input that cannot be used."""


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 4
    max_sequences: int | None = 32
    mlm_probability: float = 0.15
    mask_token_id: int | None = None  # masked-LM only; defaults to the model config's
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ConfigError(f"max_sequences must be at least 1 (or None for all), got {self.max_sequences}.")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability must be between 0 and 1, got {self.mlm_probability}.")


@dataclass
class ModelStats:
    """What is measured of one model."""

    name: str
    params_total: int
    params_non_embedding: int
    bytes_in_memory: int
    bytes_on_disk: int
    tokens_per_second: float
    loss: float | None = None
    perplexity: float | None = None


@dataclass
class EvalReport(Report):
    model: ModelStats
    reference: ModelStats | None
    kl_to_reference: float | None
    top1_agreement: float | None
    embedding_cosine: float | None
    objective: str  # "next-token", "masked-lm" or "embedding"
    sequences: int
    seq_len: int
    tokens: int
    device: str
    notes: list[str] = field(default_factory=list)
    tasks: list[Any] = field(default_factory=list)  # compress.tasks.TaskScore rows (lm-eval), when tasks were run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table, model beside reference."""
        cols = [self.model] + ([self.reference] if self.reference else [])
        rows: list[tuple[str, list[str]]] = [
            ("parameters", [f"{c.params_total / 1e6:.2f} M" for c in cols]),
            ("  without embeddings", [f"{c.params_non_embedding / 1e6:.2f} M" for c in cols]),
            ("weights in memory", [_mib(c.bytes_in_memory) for c in cols]),
            ("checkpoint (safetensors)", [_mib(c.bytes_on_disk) for c in cols]),
        ]
        if self.objective not in ("embedding", "tasks"):
            label = "perplexity" if self.objective == "next-token" else "masked-LM perplexity"
            rows.append((label, [_num(c.perplexity) for c in cols]))
            rows.append(("loss (nats/token)", [_num(c.loss) for c in cols]))
        if self.tokens:
            rows.append((f"tokens/s ({self.device})", [f"{c.tokens_per_second:,.0f}" for c in cols]))
        if self.kl_to_reference is not None:
            rows.append(("KL to reference (nats/token)", [f"{self.kl_to_reference:.4f}", "-"]))
            rows.append(("top-1 agreement", [f"{self.top1_agreement:.4f}", "-"]))
        if self.embedding_cosine is not None:
            rows.append(("embedding cosine to reference", [f"{self.embedding_cosine:.4f}", "-"]))
        header = ["", *[c.name for c in cols]]
        body = [[name, *vals] for name, vals in rows]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)]
        if self.tokens:
            lines.append(f"({self.sequences} held-out sequences x {self.seq_len} tokens, objective: {self.objective})")
        if self.tasks:
            from compress.tasks import task_table

            lines += ["", "lm-eval tasks:", task_table(self.tasks, self.model.name, self.reference.name if self.reference else None)]
        return "\n".join(lines + self.notes)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def evaluate(
    model: nn.Module,
    data: TextSplits | torch.Tensor | Sequence[torch.Tensor],
    reference: nn.Module | None = None,
    config: EvalConfig | None = None,
    *,
    name: str = "model",
    reference_name: str = "reference",
    tasks: str | Sequence[str] | None = None,
    tokenizer: Any = None,
    task_config: Any = None,
) -> EvalReport:
    """Evaluate ``model`` on held-out token sequences, optionally against ``reference``.

    ``data`` is a ``TextSplits`` (its ``eval`` part is used) or token ids
    ``[n, seq_len]``.  Evaluating a model against itself gives KL 0 and
    agreement 1.

    ``tasks`` (names, one comma-separated string, or a ``compress.tasks.TaskRunner``) also runs lm-evaluation-harness
    tasks on the model as it is (and on the reference), with ``tokenizer`` and a
    ``compress.tasks.TaskConfig``; their scores go into ``report.tasks``.  With
    tasks, ``data`` may be None (no perplexity then).
    """
    config = config or EvalConfig()
    causal = is_causal_lm(model)
    if reference is not None and is_causal_lm(reference) != causal:
        raise EvalError("The model and the reference are not the same kind (one is a causal LM, the other an encoder); compare like with like.")
    runner = None
    if tasks is not None:
        from compress.tasks import TaskRunner

        if not causal:
            raise EvalError("lm-eval tasks need a causal LM; this model is an encoder, so evaluate it without tasks.")
        if tokenizer is None:
            raise EvalError("evaluate(..., tasks=...) needs the model's tokenizer; pass tokenizer= (compress.load_model returns it).")
        runner = tasks if isinstance(tasks, TaskRunner) else TaskRunner(tasks, task_config)  # checks lm-eval, the names and the data before any model runs
        if data is None:
            return _tasks_only(model, reference, runner, tokenizer, name, reference_name)
    seqs = _eval_sequences(data, config)
    objective = "next-token" if causal else ("masked-lm" if _has_lm_head(model) else "embedding")
    input_ids, labels = _mask_tokens(seqs, model, config) if objective == "masked-lm" else (seqs, None)

    acc = _Accumulator()
    batches = list(torch.split(torch.arange(len(seqs)), config.batch_size))
    bar = tqdm(batches, desc="evaluate", unit="batch", disable=not config.progress, leave=False)
    for idx in bar:
        out = _timed_forward(model, input_ids[idx], acc, "model")
        ref = None if reference is None else _timed_forward(reference, input_ids[idx], acc, "reference")
        if objective == "next-token":
            # position t predicts token t+1; the last position has no target
            _compare(out[:, :-1], None if ref is None else ref[:, :-1], seqs[idx, 1:], acc)
        elif objective == "masked-lm":
            _compare(out, ref, labels[idx], acc)
        else:
            _embedding_stats(out, ref, acc)

    n_tokens = seqs.numel()
    stats = _model_stats(model, name, n_tokens, acc.time["model"], acc.loss("model"))
    ref_stats = None
    if reference is not None:
        ref_stats = _model_stats(reference, reference_name, n_tokens, acc.time["reference"], acc.loss("reference"))
    return EvalReport(
        model=stats,
        reference=ref_stats,
        kl_to_reference=acc.mean("kl") if reference is not None and objective != "embedding" else None,
        top1_agreement=acc.mean("agree") if reference is not None and objective != "embedding" else None,
        embedding_cosine=acc.mean("cos") if reference is not None and objective == "embedding" else None,
        objective=objective,
        sequences=len(seqs),
        seq_len=seqs.shape[1],
        tokens=n_tokens,
        device=str(next(model.parameters()).device),
        tasks=runner.run(model, tokenizer, reference) if runner else [],
    )


def _tasks_only(model, reference, runner, tokenizer, name, reference_name) -> EvalReport:
    return EvalReport(
        model=_model_stats(model, name, 0, 0.0, None),
        reference=None if reference is None else _model_stats(reference, reference_name, 0, 0.0, None),
        kl_to_reference=None, top1_agreement=None, embedding_cosine=None, objective="tasks",
        sequences=0, seq_len=0, tokens=0, device=str(next(model.parameters()).device),
        tasks=runner.run(model, tokenizer, reference),
    )


def _eval_sequences(data: Any, config: EvalConfig) -> torch.Tensor:
    if isinstance(data, TextSplits):
        seqs = data.eval
    elif isinstance(data, torch.Tensor):
        seqs = data
    elif isinstance(data, (list, tuple)) and data and all(isinstance(t, torch.Tensor) for t in data):
        seqs = torch.stack(list(data))
    else:
        raise EvalError(
            f"evaluate() needs TextSplits or token ids [n, seq_len], got {type(data).__name__}; "
            f"make them with compress.load_text(files, tokenizer)."
        )
    if seqs.dim() == 1:
        seqs = seqs.unsqueeze(0)
    if seqs.dim() != 2 or seqs.numel() == 0 or seqs.shape[1] < 2:
        raise EvalError(f"evaluate() got no usable sequences (shape {tuple(seqs.shape)}); give at least one sequence of 2 or more tokens.")
    if config.max_sequences is not None:
        seqs = seqs[: config.max_sequences]
    return seqs.long()


def _has_lm_head(model: nn.Module) -> bool:
    return hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None


def _mask_tokens(seqs: torch.Tensor, model: nn.Module, config: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a seeded random fraction of tokens with the mask id (same for model and reference)."""
    mask_id = config.mask_token_id if config.mask_token_id is not None else getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise EvalError("This masked-LM model's config has no mask_token_id; pass EvalConfig(mask_token_id=tokenizer.mask_token_id).")
    gen = torch.Generator().manual_seed(config.seed)
    chosen = torch.rand(seqs.shape, generator=gen) < config.mlm_probability
    chosen[:, 0] |= ~chosen.any(dim=1)  # every sequence scores at least one token
    labels = torch.where(chosen, seqs, torch.full_like(seqs, -100))
    return torch.where(chosen, torch.full_like(seqs, mask_id), seqs), labels


class _Accumulator:
    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.time = {"model": 0.0, "reference": 0.0}

    def add(self, key: str, total: float, count: int) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + total
        self.counts[key] = self.counts.get(key, 0) + count

    def mean(self, key: str) -> float | None:
        return self.sums[key] / self.counts[key] if self.counts.get(key) else None

    def loss(self, who: str) -> float | None:
        return self.mean(f"nll/{who}")


@torch.no_grad()
def _timed_forward(model: nn.Module, ids: torch.Tensor, acc: _Accumulator, who: str) -> torch.Tensor:
    device = next(model.parameters()).device
    ids = ids.to(device)
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=ids)
    _sync(device)
    acc.time[who] += time.perf_counter() - start
    if getattr(out, "logits", None) is not None:
        return out.logits.float().cpu()
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden.float().cpu()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compare(logits: torch.Tensor, ref: torch.Tensor | None, targets: torch.Tensor, acc: _Accumulator) -> None:
    """Accumulate NLL of ``targets`` (-100 = skip) and, with a reference, KL and agreement."""
    V = logits.shape[-1]
    if ref is not None and ref.shape[-1] != V:
        raise EvalError(f"The reference has {ref.shape[-1]} vocabulary entries and the model {V}; both must share a tokenizer.")
    logits, targets = logits.reshape(-1, V), targets.reshape(-1)
    keep = targets != -100
    logits, targets = logits[keep], targets[keep]
    ref = ref.reshape(-1, V)[keep] if ref is not None else None
    for s in range(0, len(targets), _ROWS_PER_SLICE):
        sl = slice(s, s + _ROWS_PER_SLICE)
        logp = F.log_softmax(logits[sl], dim=-1)
        acc.add("nll/model", F.nll_loss(logp, targets[sl], reduction="sum").item(), len(logp))
        if ref is not None:
            ref_logp = F.log_softmax(ref[sl], dim=-1)
            acc.add("nll/reference", F.nll_loss(ref_logp, targets[sl], reduction="sum").item(), len(logp))
            kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
            acc.add("kl", kl.clamp_min(0).sum().item(), len(kl))
            acc.add("agree", (logp.argmax(-1) == ref_logp.argmax(-1)).sum().item(), len(kl))


def _embedding_stats(hidden: torch.Tensor, ref: torch.Tensor | None, acc: _Accumulator) -> None:
    if ref is None:
        return
    cos = F.cosine_similarity(hidden.mean(dim=1), ref.mean(dim=1), dim=-1)
    acc.add("cos", cos.sum().item(), len(cos))


def _model_stats(model: nn.Module, name: str, tokens: int, seconds: float, loss: float | None) -> ModelStats:
    total, non_emb = count_parameters(model)
    return ModelStats(
        name=name,
        params_total=total,
        params_non_embedding=non_emb,
        bytes_in_memory=bytes_in_memory(model),
        bytes_on_disk=bytes_on_disk(model),
        tokens_per_second=tokens / seconds if seconds > 0 else float("nan"),
        loss=loss,
        perplexity=math.exp(loss) if loss is not None else None,
    )


# -- several domains -------------------------------------------------------------

@dataclass
class DomainsReport(Report):
    """One ``EvalReport`` per text domain: the calibration domain's held-out split, the unseen built-in text, the user's.

    ``unseen`` names the domain the headline ratio (model perplexity / reference
    perplexity) is taken on: text no calibration or training used.
    """

    reports: dict[str, EvalReport]
    unseen: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"unseen": self.unseen, "headline_ratio": self.headline_ratio(),
                "domains": {k: r.to_dict() for k, r in self.reports.items()}}

    def ratio(self, domain: str) -> float | None:
        r = self.reports[domain]
        if r.reference is None or r.model.perplexity is None or not r.reference.perplexity:
            return None
        return r.model.perplexity / r.reference.perplexity

    def headline_ratio(self) -> float | None:
        return self.ratio(self.unseen) if self.unseen in self.reports else None

    def table(self) -> str:
        """Size and speed once, then perplexity, KL and top-1 per domain (one column each)."""
        first = next(iter(self.reports.values()))
        domains = list(self.reports)
        has_ref = first.reference is not None
        cols = [first.model] + ([first.reference] if has_ref else [])
        lines = [f"{'':28s}" + "".join(f"{c.name[:22]:>24s}" for c in cols)]
        lines += [
            f"{'parameters':28s}" + "".join(f"{c.params_total / 1e6:>22.2f} M" for c in cols),
            f"{'weights in memory':28s}" + "".join(f"{_mib(c.bytes_in_memory):>24s}" for c in cols),
            f"{'checkpoint (safetensors)':28s}" + "".join(f"{_mib(c.bytes_on_disk):>24s}" for c in cols),
            f"{'tokens/s (' + first.device + ')':28s}" + "".join(f"{c.tokens_per_second:>24,.0f}" for c in cols),
            "",
        ]
        label = {"next-token": "perplexity", "masked-lm": "masked-LM perplexity"}.get(first.objective, "")
        header = ["domain", *(["model " + label, "reference " + label, "ratio", "KL to reference", "top-1"] if has_ref and label
                              else [label] if label else ["embedding cosine"])]
        rows = []
        for d in domains:
            r = self.reports[d]
            name = d + (" (unseen)" if d == self.unseen else "")
            if r.objective == "embedding":
                rows.append([name, _num(r.embedding_cosine)])
            elif has_ref:
                ratio = self.ratio(d)
                rows.append([name, _num(r.model.perplexity), _num(r.reference.perplexity),
                             "-" if ratio is None else f"{ratio:.3f}x", _num(r.kl_to_reference), _num(r.top1_agreement)])
            else:
                rows.append([name, _num(r.model.perplexity)])
        widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
        fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines += [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)]
        lines.append("(" + "; ".join(f"{d}: {r.sequences} held-out sequences x {r.seq_len} tokens" for d, r in self.reports.items())
                     + f"; objective: {first.objective})")
        if self.unseen in self.reports and has_ref:
            lines.append(f"headline: perplexity {self.headline_ratio():.3f}x the reference's on {self.unseen}, "
                         f"text no calibration or training saw")
        return "\n".join(lines + [n for r in self.reports.values() for n in r.notes])


def evaluate_domains(
    model: nn.Module,
    domains: "dict[str, TextSplits | torch.Tensor]",
    reference: nn.Module | None = None,
    config: EvalConfig | None = None,
    *,
    unseen: str | None = "news",
    name: str = "model",
    reference_name: str = "reference",
) -> DomainsReport:
    """``evaluate`` on each of ``domains`` (name -> TextSplits, whose held-out part is used, or token ids).

    Build ``domains`` with ``compress.data.evaluation_domains``: the calibration
    text's held-out split, the unseen built-in "news" text, and the user's own.
    """
    if not domains:
        raise EvalError("evaluate_domains() got no domains; give a mapping of name -> text, e.g. from compress.data.evaluation_domains.")
    reports = {d: evaluate(model, data, reference, config, name=name, reference_name=reference_name)
               for d, data in domains.items()}
    return DomainsReport(reports, unseen if unseen in reports else None)
