"""``compress.run`` and ``compress-lm run`` on a tiny model: checkpoints, report, resumption, output safety."""
import json
from pathlib import Path

import pytest

import compress
from compress.cli import main
from compress.pipeline import RunDirError
from tests.pipeline.helpers import tiny_recipe
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def finished(tiny_inputs, tmp_path_factory):
    """One finished run of the tiny recipe (shared: the tests below only read it, or rerun it)."""
    out = tmp_path_factory.mktemp("run") / "out"
    return out, compress.run(None, tiny_recipe(tiny_inputs), out, progress=False, log=None)


def test_a_run_writes_every_stage_a_report_and_exports(finished):
    out, report = finished
    assert [r["kind"] for r in report.stages] == ["prune", "recover", "quantize", "export"]
    final = Path(report.final_checkpoint)
    assert final == out / "stages" / "03-quantize"
    model, tokenizer = compress.load(final)
    assert tokenizer is not None and any(hasattr(m, "qweight") for m in model.modules())
    assert (out / "exports" / "native" / "compress.json").is_file()
    for rec in report.stages[:3]:
        ev, size = rec["eval"], rec["size"]
        assert ev["perplexity"] > 1 and 0 <= ev["kl"] and 0 <= ev["top1"] <= 1 and ev["tokens_per_second"] > 0
        assert size["stored_dtype"] == "bfloat16"  # what the exports write, not the float32 checkpoints kept for resuming
        assert size["disk_bytes"] < sum(f.stat().st_size for f in Path(rec["checkpoint"]).glob("model*.safetensors"))
    prune, _, quant = report.stages[:3]
    shipped = sum(f.stat().st_size for f in (out / "exports" / "native").glob("model*.safetensors"))
    assert abs(quant["size"]["disk_bytes"] - shipped) <= 0.01 * shipped  # the table's size is the exported file's
    assert prune["size"]["params"] < report.original["size"]["params"]  # pruning removed parameters for real
    assert quant["size"]["disk_bytes"] < prune["size"]["disk_bytes"] and quant["size"]["bits_per_weight_layers"] < 8


def test_the_report_has_the_table_charts_and_every_config(finished):
    out, report = finished
    md = (out / "report.md").read_text()
    saved = json.loads((out / "report.json").read_text())
    for png in ("widths-01-prune.png", "loss-02-recover.png", "size-vs-perplexity.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in md
    assert "| stage | params | on disk | bits/weight" in md and "2. recover 8 steps" in md
    assert saved["recipe"]["stages"][0]["prune"]["round_to"] == 16  # every option of every stage
    assert saved["stages"][1]["result"]["train"]  # the loss curve's numbers
    assert "1. prune adapt taylor 30%" in report.table()
    # the calibration text's hash travels with every checkpoint's manifest
    manifest = json.loads((Path(report.final_checkpoint) / "compress.json").read_text())
    runs = [m for m in manifest["methods"] if m["step"] == "run"]
    assert [m["stage"] for m in runs] == [1, 2, 3]
    assert {m["calibration_sha256"] for m in runs} == {saved["data"]["calibration_sha256"]}


def test_the_same_call_again_skips_every_stage(finished, tiny_inputs):
    out, first = finished
    logs: list[str] = []
    again = compress.run(None, tiny_recipe(tiny_inputs), out, progress=False, log=logs.append)
    assert sum("done in an earlier run, skipped" in line for line in logs) == 4
    assert again.stages[2]["checkpoint"] == first.stages[2]["checkpoint"]
    assert again.original["eval"] == first.original["eval"]  # measured once, read back


def test_a_changed_stage_is_redone_with_every_stage_after_it(tiny_inputs, tmp_path):
    out = tmp_path / "out"
    compress.run(None, tiny_recipe(tiny_inputs), out, progress=False, log=None)
    prune_dir = out / "stages" / "01-prune"
    before = (prune_dir / "stage.json").stat().st_mtime_ns
    recipe = tiny_recipe(tiny_inputs)
    recipe["stages"][2] = {"quantize": {"method": "int4", "group_size": 32}}
    recipe["stages"][3] = {"export": ["native"]}
    logs: list[str] = []
    report = compress.run(None, recipe, out, progress=False, log=logs.append)
    assert [("skipped" in line) for line in logs if line.startswith("[")] == [True, True, False, False]
    assert (prune_dir / "stage.json").stat().st_mtime_ns == before
    assert "g32" in report.stages[2]["label"]
    recipe["stages"] = recipe["stages"][:2]  # a shorter recipe: the stages it no longer has are removed
    compress.run(None, recipe, out, progress=False, log=logs.append)
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["01-prune", "02-recover"]


def test_a_directory_of_another_run_or_of_other_files_needs_force(finished, tiny_inputs, tmp_path):
    out, _ = finished
    other = tiny_recipe(tiny_inputs, text={"seq_len": 24})
    with pytest.raises(RunDirError, match=r"holds a run of another model or text .*; choose another directory, or pass "
                                          r"overwrite=True \(--force\)"):
        compress.run(None, other, out, progress=False, log=None)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match=r"exists and is not a compress-lm run"):
        compress.run(None, tiny_recipe(tiny_inputs, stages=["int4"]), mine, progress=False, log=None)
    compress.run(None, tiny_recipe(tiny_inputs, stages=["int4"]), mine, progress=False, log=None, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "report.md").is_file()


def test_quantize_then_recover_trains_in_the_loop_and_packs(tiny_inputs, tmp_path):
    recipe = tiny_recipe(tiny_inputs, stages=[
        {"quantize": "ternary"},
        {"recover": {"steps": 4, "batch_size": 2, "lr": 1e-3, "eval_every": 0, "qat_warmup_steps": 2}},
    ])
    report = compress.run(None, recipe, tmp_path / "qat", progress=False, log=None)
    quant, recover = report.stages
    assert quant["qat"] and quant["result"]["mode"] == "fake-quant" and "(fake-quant, QAT next)" in report.table()
    assert recover["result"]["qat_converted"]
    manifest = json.loads((Path(report.final_checkpoint) / "compress.json").read_text())
    assert manifest["quantized_modules"] and {m["method"] for m in manifest["quantized_modules"].values()} == {"ternary"}


def test_a_model_object_runs_with_its_tokenizer(tiny_inputs, tmp_path):
    recipe = tiny_recipe(tiny_inputs, stages=["int4"])
    report = compress.run(tiny_model("llama"), recipe, tmp_path / "obj", tokenizer=tiny_tokenizer(), progress=False, log=None)
    assert report.stages[0]["eval"]["kl"] >= 0
    with pytest.raises(compress.errors.CompressError, match=r"model object without its tokenizer; pass tokenizer="):
        compress.run(tiny_model("llama"), recipe, tmp_path / "obj2", progress=False, log=None)


def test_the_command_line_runs_a_recipe_file_and_checks_one(tiny_inputs, tmp_path, capsys):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_inputs, stages=["int4", {"export": ["native"]}])))
    assert main(["run", "--recipe", str(path), "--check"]) == 0
    assert "pre-flight check: passed" in capsys.readouterr().out
    assert main(["run", "--recipe", str(path), "-o", str(tmp_path / "cli"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1. quantize int4 g128 sym rtn" in out and "report: " in out and (tmp_path / "cli" / "report.md").is_file()


def test_the_command_line_says_what_is_wrong_in_one_line(tiny_inputs, tmp_path, capsys):
    assert main(["run", "--recipe", "fastest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compress-lm run: 'fastest' is not a built-in recipe") and "\n" not in err
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: {tiny_inputs.model}\ndata: [{tiny_inputs.text}]\ntext: {{seq_len: 32}}\n"
                    "stages: [{prune: {round_to: 8}}, ternary]\n")
    assert main(["run", "--recipe", str(path), "-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("compress-lm run: The recipe cannot run as written") and "down_proj" in err


def test_an_output_path_that_is_a_file_or_a_model_that_is_not_one_is_refused(tiny_inputs, tmp_path):
    recipe = tiny_recipe(tiny_inputs, stages=["int4"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match=r"Output path '.*file' is a file; give a directory for the run"):
        compress.run(None, recipe, tmp_path / "file", progress=False, log=None)
    with pytest.raises(compress.errors.CompressError, match=r"run\(\) takes a model name, a path or a model object, got int"):
        compress.run(42, recipe, tmp_path / "x", progress=False, log=None)


def test_the_command_line_lists_and_shows_recipes(capsys):
    assert main(["run", "--recipe", "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("default ") and "small-fast" in out and "smallest" in out
    assert main(["run", "--recipe", "smallest", "--show"]) == 0
    shown = capsys.readouterr().out
    assert "name: smallest" in shown and "qat_warmup_steps: 1000" in shown


def test_force_never_takes_over_names_a_run_writes_nor_replaces_the_input_model(finished, tiny_inputs, tmp_path):
    mine = tmp_path / "mine"
    (mine / "stages").mkdir(parents=True)
    (mine / "stages" / "thesis.tex").write_text("keep me")
    with pytest.raises(RunDirError, match=r"is not a compress-lm run but holds stages, names a run writes; --force will not"):
        compress.run(None, tiny_recipe(tiny_inputs, stages=["int4"]), mine, progress=False, log=None, overwrite=True)
    assert (mine / "stages" / "thesis.tex").read_text() == "keep me"
    out, _ = finished
    stage = out / "stages" / "01-prune"  # another run's checkpoint as the input: --force would clear stages/
    with pytest.raises(RunDirError, match=r"holds the input model .* in a part --force would replace"):
        compress.run(str(stage), tiny_recipe(tiny_inputs, stages=["int4"]), out, progress=False, log=None, overwrite=True)
    assert (stage / "compress.json").is_file()


def test_a_run_is_verified_by_the_command_line(finished, capsys):
    out, _ = finished
    assert main(["verify", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"run {out}: ") and printed.count("files match the sha256") >= 4


def test_every_stage_is_measured_on_the_text_and_the_unseen_domain(finished, tiny_inputs):
    out, report = finished
    label = Path(tiny_inputs.text).name
    assert report.domains() == [label, "news"] and report.unseen() == "news"
    for rec in [report.original, *[s for s in report.stages if s["kind"] != "export"]]:
        per = rec["eval"]["domains"]
        assert set(per) == {label, "news"} and all(v["perplexity"] > 1 for v in per.values())
        assert rec["eval"]["perplexity"] == per[label]["perplexity"]  # the top level stays the calibration text's
    final = report.stages[2]["eval"]["domains"]["news"]["perplexity"]
    assert report.headline_ratio() == final / report.original["eval"]["domains"]["news"]["perplexity"]
    md = (out / "report.md").read_text()
    assert f"ppl {label}" in md and "ppl news" in md and "x original (news)" in md
    assert f"{report.headline_ratio():.2f}x the original's on news" in md
    assert json.loads((out / "report.json").read_text())["headline_ratio"] == report.headline_ratio()
