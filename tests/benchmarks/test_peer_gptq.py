"""benchmarks/peer_gptq.py: arguments, the refusal without llm-compressor's venv, child measurements, rows, pairs."""
import json
import os
import stat
import sys

import pytest
import torch

from tests.bench_script import load_benchmark


def _load():
    return load_benchmark("peer_gptq")


def test_missing_peer_venv_is_one_sentence_naming_the_setup_command(tmp_path, capsys):
    bench = _load()
    missing = tmp_path / "no-venv" / "bin" / "python"
    assert bench.main(["--peer-python", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(missing) in err and "make setup-peers" in err and "--rows" in err


def test_a_python_without_llmcompressor_is_refused(tmp_path, capsys):
    bench = _load()
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert bench.main(["--peer-python", str(fake), "--rows", "llmc"]) == 2
    err = capsys.readouterr().err
    assert "has no llmcompressor installed" in err and "make setup-peers" in err


@pytest.mark.parametrize("argv, words", [
    (["--rows", "rtn,bogus"], ["bogus", "choose from", "llmc-asym"]),
    (["--rows", ","], ["names nothing"]),
    (["--group-size", "0"], ["--group-size", "positive"]),
    (["--calib-seqs", "-1"], ["--calib-seqs"]),
    (["--damp", "1.5"], ["--damp", "[0, 1)"]),
])
def test_bad_arguments_exit_2_with_one_sentence(argv, words, capsys):
    bench = _load()
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_arguments_quick_rows_and_default_output():
    bench = _load()
    args = bench.parse_args(["--group-size", "128", "--rows", "sym,llmc", "--quick"])
    assert (args.calib_seqs, args.eval_seqs, args.seq_len) == (2, 2, 64)
    assert args.row_names == ["ours GPTQ symmetric (GPTAQ)", "llm-compressor W4A16"]
    assert args.output.endswith("peer_gptq_g128")
    full = bench.parse_args([])
    assert (full.calib_seqs, full.eval_seqs, full.seq_len, full.group_size, full.damp) == (64, 8, 256, 64, 0.01)
    assert set(full.row_names) == set(bench.ROWS)
    # every row of ours but RTN is a GPTQ child, every peer row is a preset of llm-compressor
    assert {bench.ROWS[n][0] for n in full.row_names} == {"rtn", "ours", "peer-rtn", "llmc"}
    assert {bench.ROWS[n][1]["scheme"] for n in full.row_names if bench.ROWS[n][0] == "llmc"} == {"W4A16", "W4A16_ASYM"}


def test_run_child_reports_exit_code_time_and_log(tmp_path):
    bench = _load()
    script = "import torch; x = torch.ones(64 * 2**20); x += 1; print('ok')"  # 256 MiB touched
    out = bench.run_child([sys.executable, "-c", script], tmp_path / "log.txt")
    assert out["returncode"] == 0 and (tmp_path / "log.txt").read_text().strip().endswith("ok")
    assert out["ru_maxrss_mib_includes_parent"] > 256 and out["process_seconds"] > 0 and out["cpu_seconds"] > 0
    failed = bench.run_child([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log3.txt")
    assert failed["returncode"] == 3


def test_the_childs_own_high_water_mark_is_not_the_parents(tmp_path):
    """Why the children read VmHWM: a child's wait4 ru_maxrss starts at this process's RSS (kept across exec)."""
    bench = _load()
    ballast = torch.ones(96 * 2**20)  # 384 MiB resident here, in the parent
    ballast += 1
    script = ("import importlib.util as u; s = u.spec_from_file_location('pg', %r); m = u.module_from_spec(s); "
              "s.loader.exec_module(m); print(m._status_mib('VmHWM'))") % str(bench.__file__)
    out = bench.run_child([sys.executable, "-c", script], tmp_path / "log.txt")
    own = float((tmp_path / "log.txt").read_text().split()[-1])
    assert own < out["ru_maxrss_mib_includes_parent"] - 300
    del ballast


def test_peer_weights_are_loaded_into_a_copy_of_the_original(tmp_path, llama):
    from safetensors.torch import save_file

    bench = _load()
    name = next(n for n, m in llama.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    before = llama.get_submodule(name).weight.detach().clone()
    save_file({f"{name}.weight": torch.full_like(before, 0.5)}, str(tmp_path / "weights.safetensors"))
    child = {"dir": str(tmp_path)}
    m = bench.load_row("llm-compressor W4A16", child, llama)
    assert torch.equal(m.get_submodule(name).weight, torch.full_like(before, 0.5))
    assert torch.equal(llama.get_submodule(name).weight, before)  # the original is untouched
    assert child["modules_loaded"] == 1
    save_file({f"{name}.weight": torch.zeros(3, 3)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(RuntimeError, match="the peer wrote"):
        bench.load_row("llm-compressor W4A16", {"dir": str(tmp_path)}, llama)


def test_pairs_count_sequences_and_the_table_keeps_row_order():
    bench = _load()
    qq = load_benchmark("quant_quality")

    def row(kl, nll, ratio):
        return {"domains": {"news": {"perplexity": 40 * ratio, "ratio": ratio, "kl_to_fp32": sum(kl) / len(kl),
                                     "top1_agreement": 0.8, "per_sequence_kl": kl, "per_sequence_nll": nll}}}

    sym, peer = "ours GPTQ symmetric (GPTAQ)", "llm-compressor W4A16"
    result = {"group_size": 64, "domains": ["news"], "rows": {
        peer: {**row([0.3, 0.3, 0.3, 0.1], [3.0, 3.0, 3.0, 3.0], 1.2), "quantise": {"seconds": 600, "peak_rss_mib": 1900}},
        "original": row([0.0] * 4, [2.9] * 4, 1.0),
        sym: {**row([0.2, 0.2, 0.2, 0.2], [3.1, 2.9, 2.9, 2.9], 1.1), "quantise": {"seconds": 200, "peak_rss_mib": 800}},
        "llm-compressor W4A16_ASYM": {"error": "exit 3: cannot quantise"},
    }}
    bench.summarise(result, qq)
    pair = result["paired"][f"news: {sym} vs {peer}"]
    assert (pair["a_lower_kl_on"], pair["a_lower_nll_on"], pair["sequences"]) == (3, 3, 4)
    assert pair["kl"]["mean_diff"] == pytest.approx(-0.05)
    assert not any("W4A16_ASYM" in k for k in result["paired"])  # a failed row has nothing to pair
    text = bench.table(result)
    lines = [line for line in text.splitlines() if line.startswith("| ")][2:]
    assert [line.split(" | ")[0] for line in lines] == ["| original", f"| {sym}", f"| {peer}", "| llm-compressor W4A16_ASYM"]
    assert "failed: exit 3" in text and "lower KL on 3/4" in text
    assert "| 200 | - | 800 |" in text


def test_from_json_rewrites_table_pairs_and_png(tmp_path, capsys):
    bench = _load()
    assert bench.main(["--from-json", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    row = {"domains": {"news": {"perplexity": 44.0, "ratio": 1.1, "kl_to_fp32": 0.1, "top1_agreement": 0.8,
                                "per_sequence_kl": [0.1, 0.1], "per_sequence_nll": [3.0, 3.0]}}}
    old = {"model": "m", "group_size": 64, "domains": ["news"], "calibration_sequences": 2, "seq_len": 8,
           "eval_sequences": 2, "machine": "CPU", "notes": ["old"], "rows": {
               "original": row, "llm-compressor W4A16": {**row, "quantise": {"seconds": 9, "process_peak_rss_mib": 999,
                                                                               "peak_rss_mib": 700}}}}
    (tmp_path / "r.json").write_text(json.dumps(old))
    assert bench.main(["--from-json", str(tmp_path / "r.json")]) == 0
    new = json.loads((tmp_path / "r.json").read_text())
    q = new["rows"]["llm-compressor W4A16"]["quantise"]
    assert q["ru_maxrss_mib_includes_parent"] == 999 and "process_peak_rss_mib" not in q
    assert new["notes"] == bench.NOTES and (tmp_path / "r.png").stat().st_size > 0
    assert "| 9 | - | 700 |" in capsys.readouterr().out


@pytest.mark.skipif(not os.access(_load().PEER_VENV / "bin" / "python", os.X_OK), reason="no llm-compressor venv (make setup-peers)")
def test_peer_script_refuses_group_sizes_that_do_not_divide_the_columns(tmp_path, tiny_dir):
    import subprocess

    bench = _load()
    torch.save(torch.zeros(1, 8, dtype=torch.long), tmp_path / "ids.pt")
    cols = json.loads((tiny_dir / "config.json").read_text())["hidden_size"]
    proc = subprocess.run([str(bench.PEER_VENV / "bin" / "python"), str(bench.PEER_SCRIPT), "--model-dir", str(tiny_dir),
                           "--calib", str(tmp_path / "ids.pt"), "--group-size", str(cols + 1), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"groups of {cols + 1}" in proc.stderr and "not a multiple" in proc.stderr


def test_append_joins_an_earlier_run_only_with_the_same_settings_and_original(tmp_path):
    bench = _load()
    orig = {"domains": {"news": {"perplexity": 38.98}}}
    settings = {"model": "m", "group_size": 64, "seq_len": 256, "eval_sequences": 8, "calibration_sha": "abc"}
    now = {**settings, "command": "c", "date": "d", "machine": "CPU", "rows": {"original": orig}}
    with pytest.raises(bench.BenchError, match="run without --append first"):
        bench._merge_earlier(now, tmp_path / "r")
    earlier = {**settings, "rows": {"original": orig, "ours RTN symmetric": {"domains": {}}}}
    (tmp_path / "r.json").write_text(json.dumps(earlier))
    merged = bench._merge_earlier(now, tmp_path / "r")
    assert set(merged["rows"]) == {"original", "ours RTN symmetric"} and merged["appended"][0]["command"] == "c"
    with pytest.raises(bench.BenchError, match="group_size 64"):
        bench._merge_earlier({**now, "group_size": 128}, tmp_path / "r")
    other = {**now, "rows": {"original": {"domains": {"news": {"perplexity": 39.5}}}}}
    with pytest.raises(bench.BenchError, match="held-out text differs"):
        bench._merge_earlier(other, tmp_path / "r")


def test_a_failing_child_is_a_row_with_its_last_line_not_a_crash(tmp_path):
    bench = _load()
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'loading...'\necho 'llm-compressor cannot quantise these columns.' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    args = bench.parse_args(["--peer-python", str(fake), "--rows", "llmc"])
    child = bench.quantise_child("llm-compressor W4A16", args, tmp_path, tmp_path / "ids.pt", tmp_path, "k")
    assert child["returncode"] == 3
    assert child["error"] == "exit 3: llm-compressor cannot quantise these columns."
    assert "loading..." in open(child["log"]).read()
