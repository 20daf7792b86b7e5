"""``PruneConfig``: what ``compress.prune`` is asked to do, validated on construction."""
from __future__ import annotations

import math
from dataclasses import dataclass

from compress.errors import ConfigError

METHODS = ("adapt", "uniform")
IMPORTANCES = ("magnitude", "taylor", "activation")


@dataclass(frozen=True)
class PruneConfig:
    """Structured pruning settings.

    ``sparsity`` is the fraction of non-embedding parameters to remove.
    ``method="adapt"`` gives each layer its own sparsity from its importance
    (Adapt-Pruner); ``"uniform"`` gives every layer the same.  ``importance``
    ranks the channels and kv groups inside a layer.  ``step`` is the
    Adapt-Pruner sub-step (Delta) and ``amplitude`` its A; both default to the
    released scripts' 0.02.  ``drop_layers`` removes that many whole layers
    (the least important by the same layer score) before width pruning.
    Calibration draws ``calib_samples`` windows of ``calib_seq_len`` tokens
    (None: the data's own length) afresh at each sub-step, with a private
    generator seeded by ``seed``.  ``stages > 1`` is Adapt-Accel's incremental
    prune/recover schedule, which needs ``compress.recover``.
    """

    sparsity: float = 0.3
    method: str = "adapt"
    importance: str = "taylor"
    round_to: int = 8
    drop_layers: int = 0
    amplitude: float = 0.02
    step: float = 0.02
    calib_samples: int = 128
    calib_seq_len: int | None = 64
    batch_size: int = 16
    seed: int = 0
    stages: int = 1
    stage_tokens: int | None = None
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
        _at_least("stages", self.stages, 1)
        if self.calib_seq_len is not None:
            _at_least("calib_seq_len", self.calib_seq_len, 2)
        if self.stage_tokens is not None:
            _at_least("stage_tokens", self.stage_tokens, 1)
        if not (isinstance(self.amplitude, (int, float)) and math.isfinite(self.amplitude) and self.amplitude >= 0):
            raise ConfigError(f"amplitude must be a finite number >= 0, got {self.amplitude!r}.")
        if not (isinstance(self.step, (int, float)) and 0.0 < self.step <= 1.0):
            raise ConfigError(f"step (the sub-step sparsity increment) must be in (0, 1], got {self.step!r}.")

    @property
    def needs_data(self) -> bool:
        """Whether calibration text is needed: layer importance, gradients or activations."""
        return self.method == "adapt" or self.importance != "magnitude" or self.drop_layers > 0


def _at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
