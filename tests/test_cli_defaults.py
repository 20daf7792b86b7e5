"""The CLI holds no defaults of its own for configs: a flag not given leaves the config's default."""
import dataclasses

import pytest

from compress.cli import _given, build_parser
from compress.pruning import PruneConfig

# Fields reached another way: recover through --stage-lr, progress through --quiet.
PRUNE_INDIRECT = {"recover", "progress"}


def _dests(command: str) -> set[str]:
    sub = next(a for a in build_parser()._subparsers._group_actions).choices[command]
    return {a.dest for a in sub._actions}


def test_every_prune_config_field_has_a_flag():
    missing = {f.name for f in dataclasses.fields(PruneConfig)} - PRUNE_INDIRECT - _dests("prune")
    assert missing == set()


def test_prune_flags_not_given_are_not_passed_on():
    args = build_parser().parse_args(["prune", "m", "-o", "out"])
    assert _given(args, PruneConfig) == {"seed": 0}  # --seed belongs to the text options and is always set


def test_prune_flags_given_reach_the_config():
    args = build_parser().parse_args(["prune", "m", "-o", "out", "--step", "0.1", "--calib-samples", "8",
                                      "--amplitude", "0.05", "--stage-split", "equal", "--protect-layers", "0", "3"])
    given = _given(args, PruneConfig)
    assert given == {"seed": 0, "step": 0.1, "calib_samples": 8, "amplitude": 0.05, "stage_split": "equal",
                     "protect_layers": [0, 3]}


def test_prune_help_shows_the_config_defaults():
    sub = next(a for a in build_parser()._subparsers._group_actions).choices["prune"]
    text = sub.format_help()
    assert f"(default {PruneConfig.step})" in text and f"(default {PruneConfig.calib_samples})" in text


def _quantize_configs(monkeypatch, tmp_path, *extra_flags: list[str]) -> list:
    """The QuantConfig each ``compress-lm quantize m --method int4 --gptq <flags>`` builds (nothing loaded or run)."""
    from compress import cli
    import compress.api as api

    seen = []
    monkeypatch.setattr(cli, "_compress_and_save", lambda args, needs, step, bits=None, **kw: seen.append(step) or 0)
    monkeypatch.setattr(api, "quantize", lambda model, config, data=None: config)
    for flags in extra_flags:
        assert cli.main(["quantize", "m", "--method", "int4", "--gptq", *flags, "-o", str(tmp_path / "q")]) == 0
    return [step(None, None) for step in seen]


def test_quantize_calibration_sequences_default_is_quant_configs(monkeypatch, tmp_path):
    from compress.quantization import QuantConfig

    configs = _quantize_configs(monkeypatch, tmp_path, [], ["--calibration-sequences", "7"])
    assert [c.calibration_sequences for c in configs] == [QuantConfig.calibration_sequences, 7]
    sub = next(a for a in build_parser()._subparsers._group_actions).choices["quantize"]
    assert f"(default {QuantConfig.calibration_sequences}" in " ".join(sub.format_help().split())


def test_quantize_gptaq_and_zero_point_flags_reach_the_config(monkeypatch, tmp_path):
    first, plain = _quantize_configs(monkeypatch, tmp_path, ["--asymmetric", "--zero-point", "float"], ["--no-gptaq"])
    assert (first.gptaq, first.symmetric, first.zero_point) == (True, False, "float")
    assert (plain.gptaq, plain.symmetric, plain.zero_point) == (False, True, "integer")


def test_prune_refit_flags_reach_the_config():
    args = build_parser().parse_args(["prune", "m", "-o", "out", "--refit", "--refit-samples", "32",
                                      "--refit-damp", "0.3"])
    assert _given(args, PruneConfig) == {"seed": 0, "refit": True, "refit_samples": 32, "refit_damp": 0.3}
    PruneConfig(**_given(args, PruneConfig))  # and they make a valid config


def test_quantize_calibration_dtype_defaults_to_auto_and_reaches_the_config(monkeypatch, tmp_path):
    from compress import cli

    configs = _quantize_configs(monkeypatch, tmp_path, [], ["--calibration-dtype", "float32"])
    assert [c.calibration_dtype for c in configs] == ["auto", "float32"]
    with pytest.raises(SystemExit) as stop:  # not a choice: argparse's one line naming the choices, exit 2
        cli.main(["quantize", "m", "--method", "int4", "--gptq", "--calibration-dtype", "float16", "-o", "q"])
    assert stop.value.code == 2


def test_quantize_static_groups_and_code_sweeps_reach_the_config(monkeypatch, tmp_path):
    from compress import cli
    from compress.quantization import QuantConfig

    default, chosen = _quantize_configs(monkeypatch, tmp_path, [], ["--static-groups", "--code-sweeps", "0"])
    assert (default.static_groups, default.code_sweeps) == (False, QuantConfig.code_sweeps)
    assert (chosen.static_groups, chosen.code_sweeps) == (True, 0)
    # a negative count is the config's one sentence, exit 2
    assert cli.main(["quantize", "m", "--method", "int4", "--gptq", "--code-sweeps", "-1", "-o", str(tmp_path / "x")]) == 2
