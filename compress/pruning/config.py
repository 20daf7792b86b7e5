"""``PruneConfig``: what ``compress.prune`` is asked to do, validated on construction."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.errors import ConfigError

if TYPE_CHECKING:  # a runtime import would load the recovery package with every PruneConfig
    from compress.recovery.config import RecoverConfig

METHODS = ("adapt", "uniform")
IMPORTANCES = ("magnitude", "taylor", "activation")
STAGE_SPLITS = ("linear", "equal")


@dataclass(frozen=True)
class PruneConfig:
    """Structured pruning settings.

    ``sparsity`` is the fraction of non-embedding parameters to remove.
    ``method="adapt"`` gives each layer its own sparsity from its importance
    (Adapt-Pruner); ``"uniform"`` gives every layer the same.  ``importance``
    ranks the channels and kv groups inside a layer.  ``step`` is the
    Adapt-Pruner sub-step (Delta), 0.1 (the released scripts' 0.02 with 128
    calibration windows makes a 20% prune of SmolLM2-135M take over an hour
    on 2 CPU cores, against about 20 s for these defaults, with no measured
    loss of quality: see the README's "Pruning defaults"), and ``amplitude``
    its A, None meaning the step itself: the released scripts' A = Delta
    (0.02 and 0.02).  A fixed 0.02 beside a sub-step of 0.1 spreads the
    layers five times less and left SmolLM2-135M's layer 0 pruned like the
    rest (news KL 1.005 after a 20% prune, against 0.852 with A = Delta).  ``drop_layers`` removes that many whole layers
    (the least important by the same layer score) before width pruning.
    ``protect_layers`` lists decoder layers (indices in the model as given)
    that keep their full width and are never dropped; the other layers carry
    the whole budget.  Calibration draws ``calib_samples`` windows of
    ``calib_seq_len`` tokens (None: the data's own length) afresh at each
    sub-step, with a private generator seeded by ``seed``.

    ``kv_loss_windows``: a layer has only a few kv groups, and first-order
    scores can miss the one it cannot lose (SmolLM2-135M pruned 30%: Taylor ranked
    last a group of layer 1 whose removal takes perplexity from 140 to 1,246).
    So where a layer gives up a kv group, each candidate's removal is measured
    instead: the model's loss on this many of the sub-step's calibration
    windows with the group's heads cut out of ``o_proj``, one forward per
    group; the groups whose removal costs least go.  0 ranks kv groups by
    ``importance`` alone; magnitude importance (data-free) never measures.

    ``refit`` (opt-in; needs calibration text): after the last sub-step,
    every layer's ``o`` and ``mlp_out`` are refitted by ridge regression so
    the pruned layer's outputs match the original's on the first
    ``refit_samples`` calibration sequences (whole sequences, ``batch_size`` at
    a time), each layer fed the refitted layers before it; ``refit_damp``
    scales the ridge term, which pulls towards plain pruning
    (``compress.pruning.refit``).  It holds a copy of the decoder layers
    while pruning.  On SmolLM2-135M at 20% it lowers the KL to the original
    on both domains when no training follows (news 1.005 -> 0.857,
    Shakespeare 0.527 -> 0.312); distillation after it ends level on news
    with 40 steps and worse after a tiny budget (README, "Refit after pruning"), so
    it is off unless asked for.

    ``stages > 1`` is Adapt-Accel's incremental schedule (ALGORITHMS.md §1.5):
    stage k prunes until the non-embedding parameters reach ``N0 * (1 -
    sparsity * k / stages)``, then trains by distillation from a frozen copy
    of the unpruned model on the data's ``train`` split.  The stages train
    ``stages * stage_tokens`` tokens in all, split ``"linear"`` (stage k gets
    ``2k / (T (T + 1))`` of them, so later stages train longer, as the
    released scripts do) or ``"equal"``.  ``recover`` is the RecoverConfig
    the stages train with (batch size, lr, temperature, evaluation...); its
    budget is set per stage, and its WSD schedule runs once across all stages.
    None: RecoverConfig's defaults, measuring 16 held-out sequences of the
    data's ``eval`` split before and after each stage.
    """

    sparsity: float = 0.3
    method: str = "adapt"
    importance: str = "taylor"
    round_to: int = 8
    drop_layers: int = 0
    protect_layers: tuple[int, ...] = ()
    amplitude: float | None = None  # None: the step (A = Delta)
    step: float = 0.1
    calib_samples: int = 16
    calib_seq_len: int | None = 64
    batch_size: int = 8
    kv_loss_windows: int = 8
    refit: bool = False
    refit_samples: int = 128
    refit_damp: float = 0.1
    seed: int = 0
    stages: int = 1
    stage_tokens: int | None = None
    stage_split: str = "linear"
    recover: RecoverConfig | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        number = isinstance(self.sparsity, (int, float)) and not isinstance(self.sparsity, bool)
        if not number or not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"sparsity must be a fraction between 0 and 1 (exclusive), got {self.sparsity!r}.")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"importance must be one of {', '.join(IMPORTANCES)}, got {self.importance!r}.")
        _at_least("round_to", self.round_to, 1)
        _at_least("drop_layers", self.drop_layers, 0)
        _at_least("calib_samples", self.calib_samples, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("kv_loss_windows", self.kv_loss_windows, 0)
        _at_least("stages", self.stages, 1)
        _at_least("refit_samples", self.refit_samples, 1)
        if not isinstance(self.refit, bool):
            raise ConfigError(f"refit must be True or False, got {self.refit!r}.")
        damp = self.refit_damp
        if isinstance(damp, bool) or not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp > 0):
            raise ConfigError(f"refit_damp must be a finite number > 0 (0.1 is the default), got {damp!r}.")
        if self.calib_seq_len is not None:
            _at_least("calib_seq_len", self.calib_seq_len, 2)
        if not (isinstance(self.step, (int, float)) and 0.0 < self.step <= 1.0):
            raise ConfigError(f"step (the sub-step sparsity increment) must be in (0, 1], got {self.step!r}.")
        if self.amplitude is None:
            object.__setattr__(self, "amplitude", float(self.step))
        if isinstance(self.amplitude, bool) or not (isinstance(self.amplitude, (int, float))
                                                    and math.isfinite(self.amplitude) and self.amplitude >= 0):
            raise ConfigError(f"amplitude must be a finite number >= 0 (or None: the step), got {self.amplitude!r}.")
        object.__setattr__(self, "protect_layers", _layer_indices(self.protect_layers))
        self._check_stages()

    def _check_stages(self) -> None:
        if self.stage_split not in STAGE_SPLITS:
            raise ConfigError(f"stage_split must be one of {', '.join(STAGE_SPLITS)}, got {self.stage_split!r}.")
        if self.stages == 1:
            for name in ("stage_tokens", "recover"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name} applies to incremental pruning only; set stages > 1 or leave {name} unset.")
            return
        if self.stage_tokens is None:
            raise ConfigError(
                f"stages={self.stages} trains between stages: give stage_tokens, the training tokens per stage."
            )
        _at_least("stage_tokens", self.stage_tokens, 1)
        if self.drop_layers:
            raise ConfigError(
                "drop_layers cannot be combined with stages > 1; drop layers in a stages=1 call first, "
                "then prune incrementally."
            )
        if self.recover is not None:
            r = self.recover
            # A RecoverConfig can only exist once its module is loaded, so pruning need not import recovery.
            recover_config = getattr(sys.modules.get("compress.recovery.config"), "RecoverConfig", None)
            if recover_config is None or not isinstance(r, recover_config):
                raise ConfigError(f"recover must be a compress.recovery.RecoverConfig, got {type(r).__name__}.")
            if r.output_dir is not None or r.resume:
                raise ConfigError(
                    "The recovery phases between stages keep no checkpoints and cannot resume; leave "
                    "recover.output_dir and recover.resume unset."
                )
            if r.schedule == "cosine":
                raise ConfigError(
                    "Incremental pruning runs one learning-rate schedule across all stages, 'wsd' or 'constant'; "
                    "recover.schedule='cosine' is not supported there."
                )

    @property
    def needs_data(self) -> bool:
        """Whether text is needed: layer importance, gradients, activations or training between stages."""
        return self.method == "adapt" or self.importance != "magnitude" or self.drop_layers > 0 or self.stages > 1


def _at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")


def _layer_indices(value: object) -> tuple[int, ...]:
    """``protect_layers`` as a sorted tuple of distinct non-negative ints."""
    items = list(value) if isinstance(value, (list, tuple, set, frozenset, range)) else None
    if items is None or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
        raise ConfigError(f"protect_layers must be decoder layer indices (integers >= 0), got {value!r}.")
    repeated = sorted({i for i in items if items.count(i) > 1})
    if repeated:
        raise ConfigError(f"protect_layers names layer(s) {repeated} more than once; list each layer once.")
    return tuple(sorted(items))
