"""The command line as a careless user drives it: every refusal one line, exit 2, before the work, nothing lost."""
import errno
import os

import pytest
import torch

import compress
import compress.io.outputs as outputs
from compress import api
from compress.cli import main


def _one_line_error(capsys, *fragments):
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]  # progress bars may come before it
    assert "Traceback" not in stderr and err.startswith("compress-lm "), stderr
    for fragment in fragments:
        assert fragment in err, err
    return err


def _never(*args, **kwargs):
    raise AssertionError("the expensive work started before the check")


def test_force_never_deletes_a_folder_holding_the_input_model_or_user_files(tiny_dir, tmp_path, capsys, monkeypatch):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    model_dir = tiny_dir.rename(victim / "model")
    before = sorted(str(p.relative_to(victim)) for p in victim.rglob("*"))
    assert main(["quantize", str(model_dir), "--method", "int4", "--group-size", "32", "-o", str(victim), "--force"]) == 2
    _one_line_error(capsys, "holds the input model", "--force never replaces it")
    monkeypatch.chdir(victim)
    assert main(["quantize", str(model_dir), "--method", "int4", "--group-size", "32", "-o", ".", "--force"]) == 2
    _one_line_error(capsys, "--force never replaces it")
    assert sorted(str(p.relative_to(victim)) for p in victim.rglob("*")) == before


def test_force_replaces_an_earlier_output(tiny_dir, tmp_path, capsys):
    out = tmp_path / "q"
    for _ in range(2):
        assert main(["quantize", str(tiny_dir), "--method", "int4", "--group-size", "32", "-o", str(out), "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "tiny-llama"]


def test_output_under_a_file_or_unwritable_or_too_full_is_refused_before_the_work(tiny_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(api, "quantize", _never)
    args = ["quantize", str(tiny_dir), "--method", "int4", "--group-size", "32", "-o"]
    assert main(args + [str(tmp_path / "file" / "out")]) == 2
    _one_line_error(capsys, "which is a file; choose a path in a directory")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    assert main(args + [str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "has 1 KB free but the output needs about", "free some space")
    monkeypatch.setattr(outputs.os, "access", lambda p, mode: False)
    assert main(args + [str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "(permission denied or read-only)")
    assert not (tmp_path / "out").exists()


def test_a_full_disk_at_write_time_is_one_line_and_keeps_the_old_output(tiny_dir, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    out = tmp_path / "q"
    args = ["quantize", str(tiny_dir), "--method", "int4", "--group-size", "32", "-o", str(out), "--force"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    assert main(args) == 2
    _one_line_error(capsys, f"Could not write '{out}'", "nothing there was changed")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_other_os_errors_are_one_line(tiny_dir, capsys, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/some/file")

    monkeypatch.setattr(compress, "load_model", denied)
    assert main(["eval", str(tiny_dir)]) == 2
    _one_line_error(capsys, "could not read or write '/some/file' (Permission denied)")


def test_eval_json_into_a_missing_directory_is_written(tiny_dir, text_file, tmp_path):
    out = tmp_path / "reports" / "deep" / "r.json"
    assert main(["eval", str(tiny_dir), "--data", str(text_file), "--seq-len", "16", "--max-sequences", "1",
                 "--json", str(out)]) == 0
    assert out.is_file()


@pytest.mark.parametrize("device,message", [
    ("bogus", "--device 'bogus' is not a torch device; use cpu, cuda or cuda:N"),
    ("cuda:7", "--device 'cuda:7'"),
    ("mps", "--device 'mps' is not available on this machine"),
])
def test_device_is_checked_before_the_model_loads(tiny_dir, capsys, monkeypatch, device, message):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    monkeypatch.setattr(compress, "load_model", _never)
    for command in (["eval", str(tiny_dir)], ["export", str(tiny_dir), "--format", "hf", "-o", "x"],
                    ["sensitivity", str(tiny_dir)]):
        assert main(command + ["--device", device]) == 2
        _one_line_error(capsys, message)


def test_a_recipe_alias_bomb_or_deep_nesting_is_one_short_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
              for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\nstages: [{quantize: {method: *a8}}]\n")
    assert main(["run", "--recipe", str(bomb)]) == 2
    err = _one_line_error(capsys, "holds more than 20000 values")
    assert len(err) < 400
    deep = tmp_path / "deep.yaml"
    deep.write_text("stages: " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["run", "--recipe", str(deep)]) == 2
    assert len(_one_line_error(capsys, "nested")) < 400
