"""CLI policy: the calibration window against --seq-len, the training-state directory of `recover`, `bench` outside a checkout."""
import pytest

from compress.cli import main

RECOVER = ["--data", "{text}", "--seq-len", "16", "--steps", "2", "--batch-size", "2"]


def _recover(tiny_dir, text_file, out, *extra):
    flags = [f.format(text=text_file) for f in RECOVER]
    return main(["recover", str(tiny_dir), "--teacher", str(tiny_dir), *flags, "-o", str(out), *extra])


# -- --calib-seq-len -----------------------------------------------------------------

def test_a_calibration_window_longer_than_the_sequences_is_one_sentence_before_loading(tmp_path, capsys):
    code = main(["prune", "no-such-model", "--calib-seq-len", "128", "--seq-len", "64", "-o", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--calib-seq-len 128 is longer than --seq-len 64, the sequences calibration windows are cut from; " \
           "lower --calib-seq-len or raise --seq-len." in err


def test_the_default_calibration_window_follows_a_shorter_seq_len_with_a_notice(tmp_path, capsys, monkeypatch):
    from compress import api, cli
    from compress.pruning import PruneConfig

    seen = []
    monkeypatch.setattr(cli, "_compress_and_save", lambda args, needs, step, bits=None: step(None, None) and 0)
    monkeypatch.setattr(api, "prune", lambda model, config, data=None: seen.append(config) or config)
    assert main(["prune", "m", "--seq-len", "32", "-o", str(tmp_path / "p")]) == 0
    assert main(["prune", "m", "--seq-len", "512", "-o", str(tmp_path / "p")]) == 0
    assert main(["prune", "m", "--seq-len", "32", "--calib-seq-len", "16", "-o", str(tmp_path / "p")]) == 0
    assert [c.calib_seq_len for c in seen] == [32, PruneConfig.calib_seq_len, 16]
    out = capsys.readouterr().out
    assert out.count("note: calibration windows of 32 tokens (--seq-len), shorter than the default "
                     f"--calib-seq-len {PruneConfig.calib_seq_len}.") == 1


# -- recover's training state ------------------------------------------------------------

def test_recover_keeps_its_state_beside_the_output_and_drops_the_checkpoints_when_done(tiny_dir, text_file, tmp_path):
    out = tmp_path / "rec"
    assert _recover(tiny_dir, text_file, out) == 0
    state = tmp_path / "rec.train-state"
    assert (state / "log.json").is_file() and not (state / "checkpoints").exists()
    assert not (tmp_path / ".rec.train-state").exists()


def test_the_same_recover_command_continues_an_interrupted_run_and_force_starts_over(tiny_dir, text_file, tmp_path,
                                                                                     monkeypatch, capsys):
    import compress

    out = tmp_path / "rec"
    real = compress.save

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stopped after training, before the checkpoint was written

    monkeypatch.setattr(compress, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        _recover(tiny_dir, text_file, out)
    assert (tmp_path / "rec.train-state" / "checkpoints").is_dir() and not out.exists()
    monkeypatch.setattr(compress, "save", real)
    capsys.readouterr()
    assert _recover(tiny_dir, text_file, out) == 0  # no --resume needed, as with `run`
    assert "resumed from the checkpoint at step 2" in capsys.readouterr().out
    monkeypatch.setattr(compress, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        _recover(tiny_dir, text_file, out, "--force")
    monkeypatch.setattr(compress, "save", real)
    assert _recover(tiny_dir, text_file, out, "--force") == 0  # the checkpoints of the killed run are gone
    assert "resumed" not in capsys.readouterr().out


def test_recover_state_dir_is_chosen_and_checked(tiny_dir, text_file, tmp_path, capsys):
    state = tmp_path / "elsewhere"
    assert _recover(tiny_dir, text_file, tmp_path / "rec", "--state-dir", str(state)) == 0
    assert (state / "log.json").is_file() and not (tmp_path / "rec.train-state").exists()
    capsys.readouterr()
    assert main(["recover", "m", "-o", str(tmp_path / "r2"), "--state-dir", str(tmp_path / "r2" / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lies inside the output directory" in err and "put the training state beside it" in err
    (tmp_path / "afile").write_text("x")
    assert main(["recover", "m", "-o", str(tmp_path / "r3"), "--state-dir", str(tmp_path / "afile")]) == 2
    assert "is a file; give a directory for the training checkpoints." in capsys.readouterr().err


# -- bench ----------------------------------------------------------------------------------

def test_bench_outside_a_checkout_refuses_in_one_sentence(tmp_path, monkeypatch, capsys):
    from compress import cli

    monkeypatch.setattr(cli, "BENCHMARKS", tmp_path / "site-packages" / "benchmarks")
    assert main(["bench", "model", "--smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "compress-lm bench runs the benchmarks of a source checkout" in err and "clone of compress-lm" in err


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"]])
def test_bench_is_documented_as_checkout_only(capsys, argv):
    with pytest.raises(SystemExit):
        main(argv)
    assert "checkout only" in " ".join(capsys.readouterr().out.split())


# -- --seq-len against the model's context ----------------------------------------------------

def test_a_seq_len_beyond_the_models_context_is_one_sentence_before_the_text_loads(tiny_dir, tmp_path, capsys,
                                                                                    monkeypatch):
    import compress

    monkeypatch.setattr(compress, "load_text", lambda *a, **k: pytest.fail("the text was read"))
    code = main(["quantize", str(tiny_dir), "--method", "int4", "--group-size", "32", "--gptq", "--seq-len", "300",
                 "--data", "shakespeare", "-o", str(tmp_path / "q")])
    assert code == 2
    [line] = [l for l in capsys.readouterr().err.splitlines() if l.startswith("compress-lm")]
    assert line == ("compress-lm quantize: --seq-len 300 is longer than the model's context of 256 positions "
                    "(max_position_embeddings); lower --seq-len to at most 256.")
    assert main(["eval", str(tiny_dir), "--seq-len", "300"]) == 2
    assert "--seq-len 300 is longer than the model's context of 256 positions" in capsys.readouterr().err


def test_the_default_seq_len_follows_a_shorter_context_with_a_notice(tiny_dir, text_file, tmp_path, capsys, monkeypatch):
    from compress import api

    seen = []
    real = api.quantize
    monkeypatch.setattr(api, "quantize", lambda model, config, data=None: seen.append(data) or real(model, config, data))
    assert main(["quantize", str(tiny_dir), "--method", "int4", "--group-size", "32", "--gptq", "--data", str(text_file),
                 "--calibration-sequences", "1", "-o", str(tmp_path / "q")]) == 0
    assert seen[0].config.seq_len == 256  # tiny models have 256 positions; the default is 512
    out = capsys.readouterr().out
    assert out.count("note: sequences of 256 tokens, the model's context (max_position_embeddings), shorter than the "
                     "default --seq-len 512.") == 1


def test_an_earlier_versions_hidden_state_is_continued_while_it_exists_alone(tiny_dir, text_file, tmp_path, monkeypatch,
                                                                             capsys):
    import compress

    out, legacy = tmp_path / "rec", tmp_path / ".rec.train-state"
    real = compress.save
    monkeypatch.setattr(compress, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _recover(tiny_dir, text_file, out, "--state-dir", str(legacy))  # where earlier versions kept it
    monkeypatch.setattr(compress, "save", real)
    capsys.readouterr()
    assert _recover(tiny_dir, text_file, out) == 0
    printed = capsys.readouterr().out
    assert f"note: continuing from the training state an earlier version left in {legacy}." in printed
    assert "resumed from the checkpoint at step 2" in printed and not (tmp_path / "rec.train-state").exists()


def test_a_checkpoint_of_other_settings_is_refused_naming_the_difference_and_the_way_out(tiny_dir, text_file, tmp_path,
                                                                                       monkeypatch, capsys):
    import compress

    out = tmp_path / "rec"
    real = compress.save
    monkeypatch.setattr(compress, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _recover(tiny_dir, text_file, out)
    monkeypatch.setattr(compress, "save", real)
    capsys.readouterr()
    assert _recover(tiny_dir, text_file, out, "--lr", "0.001") == 2
    [line] = [l for l in capsys.readouterr().err.splitlines() if l.startswith("compress-lm")]
    assert "was made with another config (lr: 0.0001 -> 0.001)" in line
    assert line.endswith("or use another output_dir (compress-lm recover: --state-dir, or --force to start over).")
    assert _recover(tiny_dir, text_file, out, "--lr", "0.001", "--force") == 0
