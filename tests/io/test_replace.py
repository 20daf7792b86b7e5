"""Output directories: what overwrite may replace, the atomic rename, permissions, leftovers, write errors."""
import errno
import os
import stat

import pytest
import torch

import compress.io.model_files as model_files
import compress.io.outputs as outputs
from compress.io import load, save, tempdirs
from compress.io.atomic import check_output_dir
from compress.io.exports import export
from compress.io.outputs import EXPORT_MANIFEST, OutputError
from tests.tiny import tiny_model

IDS = torch.tensor([[5, 6, 7, 8]])


def _out(model):
    with torch.no_grad():
        return model(input_ids=IDS)[0]


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


# -- what overwrite replaces -------------------------------------------------------

def test_overwrite_refuses_a_directory_that_is_not_compress_lms(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match=r"exists and it is not a compress-lm checkpoint or export .*; --force replaces only"):
        save(tiny_model("llama"), victim, overwrite=True)
    assert _names(victim) == ["thesis.tex"] and _names(tmp_path) == ["victim"]


def test_overwrite_never_replaces_the_directory_holding_the_input_model(tmp_path):
    save(tiny_model("llama"), tmp_path / "out")
    save(tiny_model("llama"), tmp_path / "out" / "model")  # an input model nested in a checkpoint's place
    model = load(tmp_path / "out" / "model").model
    with pytest.raises(OutputError, match=r"holds the input model .*; --force never replaces it"):
        save(model, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "model" / "compress.json").is_file()
    with pytest.raises(OutputError, match="holds the input model"):
        save(model, tmp_path / "out" / "model", overwrite=True)  # nor the input itself


def test_overwrite_keeps_a_stage_record_beside_the_checkpoint_as_its_own(tmp_path):
    save(tiny_model("llama"), tmp_path / "ck")
    (tmp_path / "ck" / "stage.json").write_text("{}")  # what compress.run writes beside a stage's checkpoint
    save(tiny_model("llama", seed=1), tmp_path / "ck", overwrite=True)
    assert not (tmp_path / "ck" / "stage.json").exists()


def test_an_export_is_marked_and_replaceable_but_not_over_user_files(tmp_path):
    export(tiny_model("llama"), None, tmp_path / "hf", "hf")
    assert (tmp_path / "hf" / EXPORT_MANIFEST).is_file()
    export(tiny_model("llama", seed=1), None, tmp_path / "hf", "hf", overwrite=True)
    (tmp_path / "hf" / "mine.txt").write_text("x")
    with pytest.raises(OutputError, match=r"does not list \(mine.txt\)"):
        export(tiny_model("llama"), None, tmp_path / "hf", "hf", overwrite=True)
    assert (tmp_path / "hf" / "mine.txt").is_file()


def test_an_empty_directory_may_be_written(tmp_path):
    (tmp_path / "empty").mkdir()
    save(tiny_model("llama"), tmp_path / "empty", overwrite=True)
    assert (tmp_path / "empty" / "compress.json").is_file()


# -- the rename at the end -----------------------------------------------------------

def test_a_directory_appearing_during_the_write_is_left_alone(tmp_path, monkeypatch):
    target = tmp_path / "ck"
    real = model_files.shard

    def interloper(*args, **kwargs):
        target.mkdir()
        (target / "theirs.txt").write_text("not yours")
        return real(*args, **kwargs)

    monkeypatch.setattr(model_files, "shard", interloper)
    with pytest.raises(OutputError, match="appeared while compress-lm was writing it and was left as it is"):
        save(tiny_model("llama"), target)
    assert _names(target) == ["theirs.txt"] and _names(tmp_path) == ["ck"]


def test_a_checkpoint_swapped_for_user_files_during_a_replace_is_left_alone(tmp_path, monkeypatch):
    target = tmp_path / "ck"
    save(tiny_model("llama"), target)
    real = model_files.shard

    def swap(*args, **kwargs):
        for p in target.iterdir():
            p.unlink()
        (target / "theirs.txt").write_text("not yours")
        return real(*args, **kwargs)

    monkeypatch.setattr(model_files, "shard", swap)
    with pytest.raises(OutputError, match="not a compress-lm checkpoint"):
        save(tiny_model("llama", seed=1), target, overwrite=True)
    assert _names(target) == ["theirs.txt"] and _names(tmp_path) == ["ck"]


# -- permissions -----------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_permissions_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save(tiny_model("llama"), tmp_path / "ck")
        first = stat.S_IMODE((tmp_path / "ck").stat().st_mode)
        save(tiny_model("llama"), tmp_path / "ck", overwrite=True)
        again = stat.S_IMODE((tmp_path / "ck").stat().st_mode)
        weights = stat.S_IMODE((tmp_path / "ck" / "model.safetensors").stat().st_mode)
    finally:
        os.umask(old)
    assert first == again == 0o777 & ~umask
    assert weights == 0o666 & ~umask


# -- leftovers of interrupted writes -------------------------------------------------

def _dead_pid():
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid -= 1


def _leftover(folder, name, age=3600):
    d = folder / name
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\0" * 1000)
    when = tempdirs._PROCESS_START - age  # age > 0: made before this process started
    os.utime(d, (when, when))
    return d


def test_the_next_write_removes_only_stale_leftovers_of_its_own_target(tmp_path):
    dead = _dead_pid()
    stale = _leftover(tmp_path, f".ck.compress-tmp-{dead}-0123abcd")
    kept = [
        _leftover(tmp_path, f".ck.compress-tmp-{os.getppid()}-0123abcd"),  # its process still runs
        _leftover(tmp_path, f".other.compress-tmp-{dead}-0123abcd"),  # another target's
        _leftover(tmp_path, ".ck.tmp-mine"),  # not this toolkit's pattern
        _leftover(tmp_path, f".ck.compress-tmp-{dead}-9999abcd", age=-1),  # newer than this process
    ]
    from compress.io.audit import verify_directory

    save(tiny_model("llama"), tmp_path / "ck")  # removes it
    assert not stale.exists() and all(d.exists() for d in kept)
    stale = _leftover(tmp_path, f".ck.compress-tmp-{dead}-4567abcd")
    lines = verify_directory(tmp_path / "ck")
    assert [line for line in lines if line.startswith("stale")] == [
        f"stale {stale}: a temporary directory left by an interrupted write (0.0 MB); the next write to the same "
        f"directory removes it"]


def test_an_old_copy_moved_aside_is_kept_while_the_target_is_missing(tmp_path):
    old = _leftover(tmp_path, f".ck.compress-old-{_dead_pid()}-0123abcd")
    from compress.io.tempdirs import remove_stale

    assert remove_stale(tmp_path / "ck") == [] and old.exists()
    (tmp_path / "ck").mkdir()
    assert remove_stale(tmp_path / "ck") == [old] and not old.exists()


# -- errors while writing ------------------------------------------------------------------

@pytest.mark.parametrize("error", ["disk full", "safetensors"])
def test_write_errors_are_one_sentence_and_keep_the_old_checkpoint(tmp_path, monkeypatch, error):
    from safetensors import SafetensorError

    model = tiny_model("llama")
    save(model, tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}

    def full(*args, **kwargs):
        if error == "disk full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(OutputError, match=r"Could not write '.*ck' \(.*\); nothing there was changed"):
        save(tiny_model("llama", seed=1), tmp_path / "ck", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before
    assert _names(tmp_path) == ["ck"]


# -- checks before the work -------------------------------------------------------------

def test_an_output_under_a_file_unwritable_or_short_of_space_is_refused_up_front(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"lies under '.*file', which is a file"):
        check_output_dir(tmp_path / "file" / "out", False)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: type("U", (), {"free": 10_000_000})())
    with pytest.raises(OutputError, match=r"has 10 MB free but the output needs about 20 MB; free some space"):
        check_output_dir(tmp_path / "out", False, needed_bytes=20_000_000)
    check_output_dir(tmp_path / "out", False, needed_bytes=5_000_000)
    monkeypatch.setattr(outputs.os, "access", lambda p, mode: False)  # as a read-only file system answers
    with pytest.raises(OutputError, match=r"Cannot write to '.*' \(permission denied or read-only\)"):
        check_output_dir(tmp_path / "out", False)


def test_a_write_killed_with_sigkill_leaves_a_leftover_the_next_process_lists_and_removes(tmp_path):
    import subprocess
    import sys
    import textwrap

    save(tiny_model("llama"), tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    killed = textwrap.dedent(f"""
        import os, signal
        import compress.io.checkpoint as ckpt
        import compress.io.model_files as model_files
        from tests.tiny import tiny_model
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        model_files.shard = die
        ckpt.save(tiny_model("llama", seed=1), {str(tmp_path / "ck")!r}, overwrite=True)
    """)
    assert subprocess.run([sys.executable, "-c", killed], cwd=os.getcwd()).returncode == -9
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ck"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ck.compress-tmp-")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before  # the old checkpoint is intact
    leftover = tmp_path / leftovers[0]
    past = tempdirs._PROCESS_START - 60  # as if killed before this process started: what "older than the process" means
    os.utime(leftover, (past, past))
    from compress.io.audit import verify_directory

    assert [line for line in verify_directory(tmp_path / "ck") if line.startswith("stale")][0].startswith(f"stale {leftover}:")
    save(tiny_model("llama", seed=2), tmp_path / "ck", overwrite=True)
    assert _names(tmp_path) == ["ck"]
