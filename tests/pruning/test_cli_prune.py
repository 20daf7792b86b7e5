"""`compress-lm prune` with the incremental and protection flags, on a tiny model directory."""
import compress
from compress.cli import main


def test_staged_prune_with_a_protected_layer_from_the_shell(tiny_dir, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    argv = ["prune", str(tiny_dir), "--sparsity", "0.3", "--round-to", "16", "--data", str(text_file), "--seq-len", "16",
            "--stages", "2", "--stage-tokens", "64", "--stage-lr", "1e-3", "--protect-layers", "1", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "stage 1: pruned to" in printed and "stage 2: pruned to" in printed
    assert "protected layers (original index, full width): [1]" in printed
    model, _ = compress.load(out)
    d = compress.adapter_for(model).describe()
    assert d["mlp_width"][1] == 96 and d["mlp_width"][0] < 96
    step = model.config.compress_methods[0]
    assert step["config"]["stages"] == 2 and step["config"]["recover"]["lr"] == 1e-3


def test_stage_tokens_without_stages_is_one_clear_line(tiny_dir, text_file, tmp_path, capsys):
    argv = ["prune", str(tiny_dir), "--data", str(text_file), "--stage-tokens", "64", "-o", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "stage_tokens applies to incremental pruning only; set stages > 1" in err and "\n" not in err
