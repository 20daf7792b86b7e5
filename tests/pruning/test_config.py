import pytest

from compress.errors import CompressError, ConfigError
from compress.pruning import PruneConfig
from compress.pruning.pruner import resolve_config


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
        ("protect_layers", (1, -1), r"protect_layers must be decoder layer indices \(integers >= 0\)"),
        ("protect_layers", 3, r"protect_layers must be decoder layer indices"),
        ("protect_layers", (2, True), r"protect_layers must be decoder layer indices"),
        ("protect_layers", [1, 2, 1], r"protect_layers names layer\(s\) \[1\] more than once"),
        ("stage_split", "cubic", "stage_split must be one of linear, equal"),
        ("stage_tokens", 1000, "stage_tokens applies to incremental pruning only; set stages > 1"),
    ],
)
def test_each_field_is_validated_with_a_clear_message(field, value, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**{field: value})


def test_defaults_are_the_measured_fast_ones():
    cfg = PruneConfig()  # amplitude = step as in the released scripts (A = Delta); step and calibration as the README measures
    assert (cfg.method, cfg.importance, cfg.step, cfg.amplitude, cfg.round_to) == ("adapt", "taylor", 0.1, 0.1, 8)
    assert PruneConfig(step=0.05).amplitude == 0.05 and PruneConfig(step=0.05, amplitude=0.02).amplitude == 0.02
    assert (cfg.calib_samples, cfg.calib_seq_len, cfg.batch_size) == (16, 64, 8)
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


def test_protect_layers_is_normalised_to_a_sorted_tuple():
    assert PruneConfig(protect_layers=[5, 0, 2]).protect_layers == (0, 2, 5)
    assert PruneConfig().protect_layers == ()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stages": 3}, "stages=3 trains between stages: give stage_tokens"),
        ({"stages": 3, "stage_tokens": 0}, "stage_tokens must be an integer >= 1"),
        ({"stages": 3, "stage_tokens": 100, "drop_layers": 1}, "drop_layers cannot be combined with stages > 1"),
        ({"stages": 3, "stage_tokens": 100, "recover": {"lr": 1e-4}}, "recover must be a compress.recovery.RecoverConfig, got dict"),
        ({"stages": 3, "stage_tokens": 100, "recover": "out"}, "recover must be a compress.recovery.RecoverConfig"),
    ],
)
def test_incremental_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**overrides)


def test_incremental_recover_settings_that_cannot_apply_are_refused(tmp_path):
    from compress.recovery import RecoverConfig

    with pytest.raises(ConfigError, match="keep no checkpoints and cannot resume; leave recover.output_dir"):
        PruneConfig(stages=2, stage_tokens=10, recover=RecoverConfig(output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="recover.schedule='cosine' is not supported there"):
        PruneConfig(stages=2, stage_tokens=10, recover=RecoverConfig(schedule="cosine"))
    with pytest.raises(ConfigError, match="recover applies to incremental pruning only"):
        PruneConfig(recover=RecoverConfig())
    staged = PruneConfig(stages=2, stage_tokens=10, method="uniform", importance="magnitude")
    assert staged.needs_data and staged.stage_split == "linear"
