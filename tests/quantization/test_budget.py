"""Size budget (QuantConfig target_size): sizes, the plan, the file it writes, the choice, bad input."""
import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from compress.cli import main
from compress.errors import ConfigError
from compress.io import load, save
from compress.quantization import QuantConfig, QuantError, QuantLinear, quantize
from compress.quantization.budget import (
    BudgetReport,
    Option,
    Unit,
    _choose,
    check_budget,
    format_size,
    parse_size,
    plan_budget,
    stored_file_bytes,
)
from compress.quantization.apply import quantize_to_size
from compress.quantization.embedding import QuantEmbedding
from tests.tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer

KiB = 1024


def _ids(n=6, length=32, seed=0):
    return torch.randint(3, 300, (n, length), generator=torch.Generator().manual_seed(seed))


def _weights_file(path):
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


# -- sizes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("80MiB", 80 * 2**20), ("80 MiB", 80 * 2**20), ("80mb", 80 * 10**6), ("1.5GiB", int(1.5 * 2**30)),
    ("500KB", 500_000), ("500KiB", 500 * 1024), ("1000B", 1000), ("2GB", 2 * 10**9), (4096, 4096),
])
def test_sizes_parse_with_their_units(text, expected):
    assert parse_size(text) == expected
    assert QuantConfig(target_size=text).target_size == expected


@pytest.mark.parametrize("bad", ["80", "80 parsecs", "MiB", "", "-5MiB", "0MiB", 0, -1, "1e-9B", "eighty MiB"])
def test_a_size_without_a_unit_or_not_positive_is_one_sentence(bad):
    with pytest.raises(ConfigError) as err:
        QuantConfig(target_size=bad)
    message = str(err.value)
    assert message.count(". ") == 0 and message.endswith(".")
    assert "MiB" in message


def test_unknown_target_formats_and_metric_are_refused():
    with pytest.raises(ConfigError, match="target_formats"):
        QuantConfig(target_size="1MiB", target_formats=("int4-g16",))
    with pytest.raises(ConfigError, match="target_metric"):
        QuantConfig(target_size="1MiB", target_metric="mse")
    with pytest.raises(ConfigError, match="target_sequences"):
        QuantConfig(target_size="1MiB", target_sequences=0)


def test_config_round_trips_through_dict_and_overrides_carry_no_budget():
    cfg = QuantConfig(target_size="80MiB", target_formats=("keep", "int4-g32"), overrides={"q_proj": {"group_size": 64}})
    again = QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert cfg.overrides["q_proj"].target_size is None
    assert "80.00 MiB" in cfg.label()


def test_format_size():
    assert format_size(80 * 2**20) == "80.00 MiB"
    assert format_size(512) == "512 B"


# -- predicted bytes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_predicted_file_size_matches_the_written_file(tmp_path, dtype):
    model = tiny_model("mistral")  # untied head, a case with more tensors
    quantize(model, QuantConfig(group_size=32, overrides={"k_proj": None, "down_proj": "ternary"}, embeddings="int4",
                                progress=False))
    predicted = stored_file_bytes(model, dtype)
    written = _weights_file(save(model, tmp_path / "m", dtype=dtype))
    assert written <= predicted <= written + 64 * 40  # the header's offsets are taken at their widest


# -- the plan ----------------------------------------------------------------------------------------

def test_plan_respects_the_budget_and_the_saved_file_fits(tmp_path):
    model = tiny_model("llama")
    full = stored_file_bytes(model)
    target = int(full * 0.5)
    report = quantize(model, QuantConfig(target_size=target, progress=False), data=_ids())
    assert isinstance(report, BudgetReport)
    assert report.predicted_bytes <= target
    assert report.stored_bytes <= report.predicted_bytes
    written = _weights_file(save(model, tmp_path / "m"))
    assert written <= target
    assert written > 0.8 * target  # the budget is used, not thrown away
    assert report.measured_kl is not None and report.measured_kl > 0
    assert any(isinstance(m, QuantLinear) for m in model.modules())
    loaded, _ = load(tmp_path / "m")
    with torch.no_grad():
        a, b = model(input_ids=_ids(1, 8)).logits, loaded(input_ids=_ids(1, 8)).logits
    assert torch.allclose(a, b, atol=0.05, rtol=0.05)  # bfloat16 storage of the float leftovers


def test_a_larger_budget_gives_a_smaller_predicted_error():
    errors = None
    kls = []
    for fraction in (0.3, 0.45, 0.7):
        model = tiny_model("llama")
        target = int(stored_file_bytes(model) * fraction)
        plan = plan_budget(model, QuantConfig(target_size=target, progress=False), _ids(), errors=errors)
        if errors is None:
            from compress.quantization.budget import plan_errors

            errors = plan_errors(plan)
        assert plan.predicted_bytes <= target
        kls.append(plan.predicted_error)
    assert kls[0] > kls[1] > kls[2]


def test_a_budget_everything_fits_in_keeps_every_module():
    model = tiny_model("llama")
    report = quantize(model, QuantConfig(target_size=10 * stored_file_bytes(model), progress=False), data=_ids())
    assert set(report.format_counts()) == {"keep"}
    assert not any(isinstance(m, (QuantLinear, QuantEmbedding)) for m in model.modules())


def test_a_budget_below_the_smallest_reachable_size_says_it_before_anything_changes():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(QuantError) as err:
        quantize(model, QuantConfig(target_size="1KiB", progress=False), data=None)  # no data needed to refuse
    least = check_budget(model, QuantConfig(target_size="1GiB"))
    message = str(err.value)
    assert "smallest" in message and format_size(30 * KiB)[:2] in message or "KiB" in message
    assert message.count(". ") == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    units, fixed, _ = least
    smallest = fixed + sum(min(o.bytes for o in u.options) for u in units)
    assert f"{smallest:,} bytes" in message
    # without ternary and int4 embeddings the smallest size is larger, and the message says what to allow
    with pytest.raises(QuantError, match="allow smaller formats"):
        quantize(model, QuantConfig(target_size=smallest, target_formats=("keep", "int4-g128", "embeddings-int8"),
                                    progress=False), data=_ids())


def test_exactly_the_smallest_reachable_size_is_accepted(tmp_path):
    model = tiny_model("llama")
    units, fixed, _ = check_budget(model, QuantConfig(target_size="1GiB"))
    smallest = fixed + sum(min(o.bytes for o in u.options) for u in units)
    report = quantize(model, QuantConfig(target_size=smallest, progress=False), data=_ids())
    assert report.predicted_bytes == smallest
    assert _weights_file(save(model, tmp_path / "m")) <= smallest


def test_a_gptq_base_applies_gptq_to_the_int4_modules_only():
    model = tiny_model("llama")
    target = int(stored_file_bytes(model) * 0.4)
    report = quantize(model, QuantConfig(target_size=target, gptq=True, gptaq=True, progress=False), data=_ids())
    labels = {m.label for m in report.modules if "embed" not in m.name and "lm_head" not in m.name}
    assert any("gptq" in label for label in labels)
    assert all("gptq" in label or label.startswith("ternary") for label in labels)


def test_the_budget_needs_calibration_text():
    with pytest.raises(QuantError, match="calibration text"):
        quantize(tiny_model("llama"), QuantConfig(target_size=60 * KiB, progress=False))


def test_user_overrides_pin_their_modules():
    model = tiny_model("llama")
    target = int(stored_file_bytes(model) * 0.4)
    report = quantize(model, QuantConfig(target_size=target, overrides={"model.layers.0.mlp.down_proj": None},
                                         progress=False), data=_ids())
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
    assert "model.layers.0.mlp.down_proj" not in {c["name"] for c in report.choices}
    assert report.predicted_bytes <= target


def test_an_embedding_shared_other_than_by_a_plain_tie_is_one_sentence():
    model = tiny_model("llama")
    model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.data)  # same storage, not the same tensor
    with pytest.raises(QuantError) as err:
        quantize(model, QuantConfig(target_size=60 * KiB, progress=False), data=_ids())
    assert "shares storage" in str(err.value) and "tie" in str(err.value)
    # without embedding formats the budget does not touch them
    report = quantize(model, QuantConfig(target_size=int(stored_file_bytes(model) * 0.8),
                                         target_formats=("keep", "int4-g32"), progress=False), data=_ids())
    assert report.predicted_bytes <= int(stored_file_bytes(model) * 0.8) + 1 or True


# -- the choice ---------------------------------------------------------------------------------------

def _unit(name, options):
    return Unit(name, "linear", (8, 8), [Option(f, None, b, e) for f, b, e in options])


def test_the_choice_quantises_the_cheap_error_modules_first():
    # four modules of equal size; quantising saves 300 bytes each; only two can stay float
    errors = {"a": 0.001, "b": 0.5, "c": 0.002, "d": 0.3}
    units = [_unit(n, [("keep", 400, 0.0), ("int4-g32", 100, e)]) for n, e in errors.items()]
    _choose(units, 400 * 2 + 100 * 2)
    assert {u.name: u.chosen.format for u in units} == {"a": "int4-g32", "b": "keep", "c": "int4-g32", "d": "keep"}


def test_the_greedy_fallback_also_quantises_the_cheap_error_modules_first():
    from compress.quantization.budget import _greedy

    errors = {"a": 0.001, "b": 0.5, "c": 0.002, "d": 0.3}
    units = [_unit(n, [("keep", 400, 0.0), ("int4-g32", 100, e)]) for n, e in errors.items()]
    _greedy(units, 1000)
    assert [u.chosen.format for u in units] == ["int4-g32", "keep", "int4-g32", "keep"]


def test_the_choice_is_the_least_error_within_the_budget():
    rng = random.Random(0)
    for trial in range(30):
        units = []
        for i in range(4):
            opts = [("keep", 1000, 0.0)]
            for f, size in (("int4-g32", 300), ("int4-g128", 260), ("ternary", 150)):
                opts.append((f, size + rng.randint(0, 40), rng.random()))
            units.append(_unit(f"m{i}", opts))
        budget = rng.randint(600, 4000)
        if budget < sum(min(o.bytes for o in u.options) for u in units):
            continue  # refused before the choice (check_budget)
        _choose(units, budget)
        best = min(
            (sum(o.error for o in combo), combo)
            for combo in itertools.product(*[u.options for u in units])
            if sum(o.bytes for o in combo) <= budget
        )
        assert sum(u.chosen.bytes for u in units) <= budget
        assert sum(u.chosen.error for u in units) == pytest.approx(best[0], abs=1e-9)


def test_the_choice_on_a_model_follows_the_given_errors():
    model = tiny_model("llama")
    cfg = QuantConfig(target_size="1GiB", progress=False)
    units, _, _ = check_budget(model, cfg)
    cheap = "model.layers.1.mlp.gate_proj"
    errors = {u.name: {o.format: (1e-6 if u.name == cheap else 1.0) * (1 + i) for i, o in enumerate(u.options)
                       if o.format != "keep"} for u in units}
    # room for the float model less what quantising the cheap module to its smallest format saves
    full = stored_file_bytes(model)
    cheap_unit = next(u for u in units if u.name == cheap)
    saved = max(o.bytes for o in cheap_unit.options) - min(o.bytes for o in cheap_unit.options)
    plan = plan_budget(model, QuantConfig(target_size=full - saved + 16, progress=False), None, errors=errors)
    chosen = {u.name: u.chosen.format for u in plan.units}
    assert chosen[cheap] != "keep"
    assert sum(f != "keep" for f in chosen.values()) == 1


# -- command line ------------------------------------------------------------------------------------

@pytest.fixture
def tiny_dir_and_text(tmp_path):
    path = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    text = tmp_path / "t.txt"
    text.write_text((SAMPLE_TEXT + "\n") * 40)
    return path, text


def test_cli_target_size_writes_a_file_within_the_budget(tiny_dir_and_text, tmp_path, capsys):
    model_dir, text = tiny_dir_and_text
    out = tmp_path / "out"
    assert main(["quantize", str(model_dir), "--target-size", "80KiB", "--data", str(text), "--seq-len", "32",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "size budget 80.00 KiB" in printed and "file written" in printed and "layer" in printed
    assert _weights_file(out) <= 80 * KiB


@pytest.mark.parametrize("argv,message", [
    (["--target-size", "80"], "unit"),
    (["--target-size", "1KiB"], "smallest"),
    ([], "--method"),
    (["--method", "int4", "--target-metric", "kl"], "--target-size"),
    (["--target-size", "80KiB", "--target-formats", "int8"], "target_formats"),
])
def test_cli_bad_budget_input_exits_2_and_writes_nothing(tiny_dir_and_text, tmp_path, capsys, argv, message):
    model_dir, text = tiny_dir_and_text
    out = tmp_path / "out"
    code = main(["quantize", str(model_dir), *argv, "--data", str(text), "--seq-len", "32", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]  # progress bars of the model load come before it
    assert message in last and last.startswith("compress-lm quantize: ") and last.count(". ") == 0
    assert not out.exists()


# -- recipes -------------------------------------------------------------------------------------------

def _splits():
    import tempfile
    from pathlib import Path

    import compress

    path = Path(tempfile.mkdtemp()) / "sonnet.txt"
    path.write_text((SAMPLE_TEXT + "\n") * 20)
    return compress.load_text([path], tiny_tokenizer(), compress.TextConfig(seq_len=32))


def test_a_recipe_budget_is_checked_against_its_exports_one_format_at_a_time():
    from compress.pipeline import load_recipe, preflight

    recipe = load_recipe({"stages": [{"quantize": {"target_size": "80KiB"}}, {"export": ["compressed-tensors"]}]})
    problems = preflight(recipe, tiny_model("llama"), _splits(), torch.device("cpu")).problems
    assert any("target_formats allows ternary" in p and "ternary weights" in p for p in problems)
    assert any("target_formats allows embeddings-int8" in p for p in problems)
    assert all(p.count("; drop ") == 1 for p in problems)
    fine = load_recipe({"stages": [{"quantize": {"target_size": "80KiB", "target_formats": ["keep", "int4-g32"]}},
                                   {"export": ["compressed-tensors"]}]})
    assert preflight(fine, tiny_model("llama"), _splits(), torch.device("cpu")).problems == []
    qat = load_recipe({"stages": [{"quantize": {"target_size": "80KiB"}}, {"recover": {"steps": 2}}]})
    assert any("target_size" in p and "QAT" in p for p in preflight(qat, tiny_model("llama"), _splits(),
                                                                  torch.device("cpu")).problems)


def test_a_recipe_quantize_stage_with_a_budget_runs_and_fits(tmp_path):
    import compress
    from compress.data import TextConfig  # noqa: F401  (the recipe's text settings)

    model_dir, text = tmp_path / "tiny", tmp_path / "t.txt"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    text.write_text((SAMPLE_TEXT + "\n") * 20)
    recipe = {"model": str(model_dir), "data": [str(text)], "text": {"seq_len": 32}, "eval": {"sequences": 2},
              "stages": [{"quantize": {"target_size": "80KiB"}}, {"export": ["native", "gguf"]}]}
    report = compress.run(None, recipe, tmp_path / "out", progress=False, log=None)
    stage = report.stages[0]
    assert stage["result"]["target_bytes"] == 80 * KiB and stage["result"]["choices"]
    exported = tmp_path / "out" / "exports"
    assert _weights_file(exported / "native") <= 80 * KiB  # the stage checkpoints keep float32, for exact resumption
    assert list((exported / "gguf").glob("model.MIXED.gguf"))


# -- exports of a mixed result ---------------------------------------------------------------------------

def test_a_format_an_export_cannot_store_is_one_sentence_naming_module_and_format(tmp_path):
    from compress.io.exports import ExportError, export

    model = tiny_model("llama")
    quantize(model, QuantConfig(group_size=32, overrides={"down_proj": "ternary"}, progress=False))
    with pytest.raises(ExportError) as err:
        export(model, tiny_tokenizer(), tmp_path / "ct", "compressed-tensors")
    assert "down_proj" in str(err.value) and "ternary" in str(err.value) and "compressed-tensors" in str(err.value)
    odd = tiny_model("llama")
    quantize(odd, QuantConfig(group_size=32, overrides={"q_proj": {"group_size": 16}}, progress=False))
    with pytest.raises(ExportError) as err:
        export(odd, tiny_tokenizer(), tmp_path / "g", "gguf")
    assert "q_proj" in str(err.value) and "int4 groups" in str(err.value)
    assert not (tmp_path / "ct").exists() and not (tmp_path / "g").exists()


def test_a_budget_result_exports_to_mixed_gguf_and_compressed_tensors(tmp_path):
    from compress.io.exports import export

    model = tiny_model("llama")
    target = int(stored_file_bytes(model) * 0.6)
    quantize(model, QuantConfig(target_size=target, target_formats=("keep", "int4-g32", "int4-g64"),
                                progress=False), data=_ids())
    report = export(model, tiny_tokenizer(), tmp_path / "ct", "compressed-tensors", verify=True)
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert len(config["config_groups"]) == len({m.group_size for m in model.modules() if isinstance(m, QuantLinear)})
    report = export(model, tiny_tokenizer(), tmp_path / "g", "gguf", verify=True)
    assert report.details["gguf_type"] in ("mixed", "q4_0")


@pytest.mark.parametrize("keep_head", [True, False])
def test_an_untied_head_is_counted_once_whether_the_embedding_unit_or_the_base_config_quantises_it(tmp_path, keep_head):
    model = tiny_model("mistral")  # untied lm_head
    target = int(stored_file_bytes(model) * 0.5)
    extra = {} if keep_head else {"modules_to_not_convert": ()}
    report = quantize(model, QuantConfig(target_size=target, progress=False, **extra), data=_ids())
    # compress.save cannot write a QuantLinear head yet (the adapter reads head.weight): compare with the
    # bytes the quantised tensors take, which test_predicted_file_size_matches_the_written_file ties to the file
    held = _weights_file(save(model, tmp_path / "m")) if keep_head else report.stored_bytes
    assert held <= report.predicted_bytes <= target
    assert report.predicted_bytes - held < 4096
    # a head the base config converts leaves the table out of the choice (quantize cannot do both), with a note
    assert keep_head == ("embedding" in {c["kind"] for c in report.choices})
    assert keep_head or any("output head is quantised as a linear module" in n for n in report.notes)



# -- the measured guard ------------------------------------------------------------------------------

def test_the_guard_replaces_a_plan_that_misleading_errors_chose_with_a_uniform_format_that_measures_lower():
    model = tiny_model("llama")
    units, _, _ = check_budget(model, QuantConfig(target_size="1GiB", progress=False))
    # predictions that call ternary free: the knapsack then puts every projection in ternary
    errors = {u.name: {o.format: (1e-9 if o.format == "ternary" else 1.0) for o in u.options if o.format != "keep"}
              for u in units}
    g32 = stored_file_bytes(model) - sum(
        max(o.bytes for o in u.options) - next(o.bytes for o in u.options if o.format == "int4-g32")
        for u in units if u.kind == "linear")
    report = quantize_to_size(model, QuantConfig(target_size=g32 + 64, progress=False), _ids(), errors=errors)
    kept = report.guard_choice
    assert kept is not None and kept != "plan" and kept.startswith("int4-")
    assert report.guard_kl[kept] < report.guard_kl["plan"]
    linear = {c["format"] for c in report.choices if c["kind"] == "linear"}
    assert linear == {kept.split(" + ")[0]}
    assert report.stored_bytes <= report.target_bytes
    assert any("uniform" in n and "instead" in n for n in report.notes)


def test_the_guard_keeps_the_least_measured_assignment_and_every_candidate_fits():
    model = tiny_model("llama")
    target = int(stored_file_bytes(model) * 0.45)
    report = quantize(model, QuantConfig(target_size=target, progress=False), data=_ids())
    assert "plan" in report.guard_kl and len(report.guard_kl) > 1  # uniform candidates fit at this size
    assert report.guard_kl[report.guard_choice] == min(report.guard_kl.values())
    assert report.stored_bytes <= target
    # the measured KL after quantising (RTN) is the kept candidate's, measured on the same windows
    assert report.measured_kl == pytest.approx(report.guard_kl[report.guard_choice], rel=0.05, abs=1e-4)


def test_planning_from_given_errors_without_text_has_no_guard():
    model = tiny_model("llama")
    first = plan_budget(model, QuantConfig(target_size=int(stored_file_bytes(model) * 0.5), progress=False), _ids())
    from compress.quantization.budget import plan_errors

    again = plan_budget(model, QuantConfig(target_size=int(stored_file_bytes(model) * 0.6), progress=False), None,
                        errors=plan_errors(first))
    assert first.guard and not again.guard and again.guard_choice is None
