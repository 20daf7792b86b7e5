import json
import subprocess
import sys

import pytest

from compress.cli import build_parser, main


def test_eval_against_itself(tiny_dir, text_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["eval", str(tiny_dir), "--data", str(text_file), "--seq-len", "16",
                 "--max-sequences", "3", "--reference", str(tiny_dir), "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "KL to reference" in printed
    assert "sonnet.txt" in printed and "news (unseen)" in printed  # the text's held-out split and the unseen domain
    report = json.loads(out.read_text())
    assert report["unseen"] == "news" and report["headline_ratio"] == pytest.approx(1.0)
    for domain in ("sonnet.txt", "news"):
        r = report["domains"][domain]
        assert r["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
        assert r["top1_agreement"] == 1.0 and r["sequences"] == 3


def test_eval_data_adds_a_third_domain(tiny_dir, text_file, tmp_path, capsys):
    mine = tmp_path / "mine.txt"
    mine.write_text("A plain modern sentence about trains, rain and tea. " * 40)
    out = tmp_path / "r.json"
    assert main(["eval", str(tiny_dir), "--data", str(text_file), "--eval-data", str(mine), "--seq-len", "16",
                 "--max-sequences", "2", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["domains"]) == ["sonnet.txt", "news", "your text"]
    assert "your text" in capsys.readouterr().out


def test_eval_data_that_is_empty_exits_2(tiny_dir, text_file, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["eval", str(tiny_dir), "--eval-data", str(empty), "--seq-len", "16"]) == 2
    assert "empty" in capsys.readouterr().err


def test_eval_without_reference(tiny_dir, text_file, capsys):
    assert main(["eval", str(tiny_dir), "--data", str(text_file), "--seq-len", "16", "--max-sequences", "2"]) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "KL to reference" not in printed


def test_unknown_model_exits_2_with_one_line(capsys):
    assert main(["eval", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compress-lm eval: 'no-such-model' is not a built-in model") and "\n" not in err


def test_empty_text_exits_2(tiny_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["eval", str(tiny_dir), "--data", str(empty)]) == 2
    assert "No text found" in capsys.readouterr().err


def test_prune_then_quantize_then_eval(tiny_dir, text_file, tmp_path, capsys):
    import torch

    import compress

    pruned, packed = tmp_path / "pruned", tmp_path / "packed"
    assert main(["prune", str(tiny_dir), "--sparsity", "0.25", "--round-to", "32", "--data", str(text_file), "--seq-len", "16", "-o", str(pruned)]) == 0
    model, _ = compress.load(pruned)
    assert sum(compress.adapter_for(model).describe()["mlp_width"]) < 2 * 96
    assert model.config.compress_methods[0]["step"] == "prune"
    assert main(["quantize", str(pruned), "--method", "int4", "--group-size", "32", "-o", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint written to" in out
    q, _ = compress.load(packed)
    assert [m["step"] for m in q.config.compress_methods] == ["prune", "quantize"]
    assert any(type(m).__name__ == "QuantLinear" for m in q.modules())
    with torch.no_grad():
        assert torch.isfinite(q(torch.tensor([[5, 6, 7]])).logits).all()
    assert main(["eval", str(packed), "--data", str(text_file), "--seq-len", "16", "--max-sequences", "2", "--reference", str(tiny_dir)]) == 0


def test_recover_distils_and_saves(tiny_dir, text_file, tmp_path, capsys):
    import compress

    out = tmp_path / "rec"
    code = main(["recover", str(tiny_dir), "--teacher", str(tiny_dir), "--data", str(text_file), "--seq-len", "16",
                 "--steps", "2", "--batch-size", "2", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    model, _ = compress.load(out)
    assert model.config.compress_methods[-1]["step"] == "recover"


def test_recover_hidden_weight_trains_and_needs_a_teacher(tiny_dir, text_file, tmp_path, capsys):
    base = ["recover", str(tiny_dir), "--data", str(text_file), "--seq-len", "16", "--steps", "1", "--batch-size", "2"]
    assert main(base + ["--hidden-weight", "0.5", "-o", str(tmp_path / "alone")]) == 2
    assert "add --teacher MODEL or drop --hidden-weight" in capsys.readouterr().err
    assert main(base + ["--teacher", str(tiny_dir), "--hidden-weight", "-1", "-o", str(tmp_path / "neg")]) == 2
    assert "hidden_weight must be a non-negative number" in capsys.readouterr().err
    assert not (tmp_path / "alone").exists() and not (tmp_path / "neg").exists()
    out = tmp_path / "rec"
    assert main(base + ["--teacher", str(tiny_dir), "--hidden-weight", "0.5", "-o", str(out)]) == 0, capsys.readouterr().err
    assert "hidden states x 0.5" in (out.parent / "rec.train-state" / "log.json").read_text()


def test_existing_output_is_refused_before_work(tiny_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main(["quantize", str(tiny_dir), "--method", "ternary", "-o", str(tmp_path / "out")]) == 2
    assert "already exists; pass overwrite=True (--force" in capsys.readouterr().err


def test_quantize_shape_problems_are_one_error(tiny_dir, tmp_path, capsys):
    # int4 groups must be powers of two: group size 48 fails for every layer, refused in one line before any output
    assert main(["quantize", str(tiny_dir), "--method", "int4", "--group-size", "48", "-o", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "48" in err and not (tmp_path / "q").exists()


@pytest.mark.parametrize("flags, message", [
    (["--method", "ternary", "--group-size", "64"], "group_size=64 applies to int4 only; drop it or use method='int4'."),
    (["--method", "int4", "--scale", "absmedian"], "scale='absmedian' applies to ternary only; drop it or use method='ternary'."),
    (["--method", "int3", "--a8"], "activations='a8' is only available for ternary weights; use 'a16' with int4."),
])
def test_quantize_flags_of_the_other_method_are_one_error(tiny_dir, tmp_path, capsys, flags, message):
    assert main(["quantize", str(tiny_dir), *flags, "-o", str(tmp_path / "q")]) == 2
    assert capsys.readouterr().err == f"compress-lm quantize: {message}\n" and not (tmp_path / "q").exists()


@pytest.mark.parametrize("command", ["eval", "prune", "quantize", "recover", "export", "run", "bench"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: compress-lm " + command in capsys.readouterr().out


def test_bench_kernels_without_gpu_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU: the benchmark would run")
    code = main(["bench", "kernels"])
    assert code == 2
    out = capsys.readouterr()
    assert "GPU" in out.out + out.err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "compress.cli", "--help"], capture_output=True, text=True, check=True)
    assert "eval" in out.stdout and "quantize" in out.stdout


@pytest.mark.slow
def test_eval_real_smollm2_directory_against_builtin(tmp_path, capsys):
    import compress

    model, tok = compress.load_model("smollm2-135m")
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    out = tmp_path / "r.json"
    code = main(["eval", str(tmp_path / "hf"), "--reference", "smollm2-135m", "--max-sequences", "2",
                 "--seq-len", "128", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["unseen"] == "news" and report["headline_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert "news" in report["domains"] and len(report["domains"]) >= 2  # the calibration domain and the unseen one
    for r in report["domains"].values():
        assert r["kl_to_reference"] == pytest.approx(0.0, abs=1e-5) and r["top1_agreement"] == 1.0
        assert 5 < r["model"]["perplexity"] < 500  # a working LM on English
        assert r["model"]["params_total"] == 134_515_008


@pytest.mark.parametrize("flags, act_order, clip_search, refit", [
    ([], True, True, True), (["--no-act-order"], False, True, True), (["--no-clip-search"], True, False, True),
    (["--no-group-refit"], True, True, False)])
def test_quantize_gptq_defaults_and_switches(tiny_dir, text_file, tmp_path, monkeypatch, flags, act_order, clip_search,
                                             refit):
    from compress import api

    seen = []
    real = api.quantize
    monkeypatch.setattr(api, "quantize", lambda model, config, data=None: seen.append(config) or real(model, config, data))
    assert main(["quantize", str(tiny_dir), "--method", "int4", "--group-size", "32", "--gptq", "--data", str(text_file),
                 "--seq-len", "16", "--calibration-sequences", "4", *flags, "-o", str(tmp_path / "q")]) == 0
    assert (seen[0].gptq, seen[0].act_order, seen[0].clip_search, seen[0].group_refit) == (True, act_order, clip_search,
                                                                                          refit)
