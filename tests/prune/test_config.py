import pytest

from compress.errors import CompressError, ConfigError
from compress.prune import PruneConfig
from compress.prune.pruner import resolve_config


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, 1.5, -0.1, True, "0.3"])
def test_sparsity_outside_open_unit_interval_is_rejected(bad):
    with pytest.raises(ConfigError, match=r"sparsity must be a fraction between 0 and 1 \(exclusive\)"):
        PruneConfig(sparsity=bad)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("method", "greedy", "method must be one of adapt, uniform"),
        ("importance", "hessian", "importance must be one of magnitude, taylor, activation"),
        ("round_to", 0, "round_to must be an integer >= 1"),
        ("drop_layers", -1, "drop_layers must be an integer >= 0"),
        ("calib_samples", 0, "calib_samples must be an integer >= 1"),
        ("calib_seq_len", 1, "calib_seq_len must be an integer >= 2"),
        ("batch_size", 0, "batch_size must be an integer >= 1"),
        ("stages", 0, "stages must be an integer >= 1"),
        ("amplitude", -0.1, "amplitude must be a finite number >= 0"),
        ("step", 0.0, r"step \(the sub-step sparsity increment\) must be in \(0, 1\]"),
        ("step", 1.5, r"must be in \(0, 1\]"),
    ],
)
def test_each_field_is_validated_with_a_clear_message(field, value, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**{field: value})


def test_defaults_follow_the_released_adapt_pruner_scripts():
    cfg = PruneConfig()
    assert (cfg.method, cfg.importance, cfg.step, cfg.amplitude, cfg.round_to) == ("adapt", "taylor", 0.02, 0.02, 8)
    assert cfg.needs_data
    assert not PruneConfig(method="uniform", importance="magnitude").needs_data
    assert PruneConfig(method="uniform", importance="magnitude", drop_layers=1).needs_data


def test_resolve_config_accepts_a_config_a_sparsity_or_nothing():
    assert resolve_config(0.4, {"method": "uniform"}) == PruneConfig(sparsity=0.4, method="uniform")
    base = PruneConfig(sparsity=0.2)
    assert resolve_config(base, {}) is base
    assert resolve_config(base, {"round_to": 16}).round_to == 16
    assert resolve_config(None, {"sparsity": 0.1}).sparsity == 0.1


def test_resolve_config_rejects_unknown_and_doubled_options():
    with pytest.raises(ConfigError, match="Unknown prune option.*sparsty"):
        resolve_config(0.3, {"sparsty": 0.3})
    with pytest.raises(CompressError, match="sparsity was given twice"):
        resolve_config(0.3, {"sparsity": 0.3})
