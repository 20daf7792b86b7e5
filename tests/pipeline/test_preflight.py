"""The pre-flight check: every problem of a recipe, at once, before any calibration or training."""
import pytest
import torch

import compress
from compress.pipeline import PreflightError, Recipe, load_recipe, preflight
from compress.pipeline import exporting
from compress.pipeline.memory import available_bytes
from tests.pipeline.helpers import tiny_recipe
from tests.tiny import tiny_model, tiny_tokenizer

CPU = torch.device("cpu")


@pytest.fixture
def no_calibration(monkeypatch):
    """Fail the test if any pruning calibration or GPTQ pass starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("calibration ran before the pre-flight check stopped the run")

    monkeypatch.setattr("compress.pruning.pruner.calibrate", refuse)
    monkeypatch.setattr("compress.quantization.apply.quantize_sequential", refuse)


def _splits(seq_len=32):
    from tests.tiny import SAMPLE_TEXT

    return compress.load_text([_text_file(SAMPLE_TEXT)], tiny_tokenizer(), compress.TextConfig(seq_len=seq_len))


def _text_file(text, _cache={}):
    import tempfile
    from pathlib import Path

    if "path" not in _cache:
        _cache["path"] = Path(tempfile.mkdtemp()) / "sonnet.txt"
        _cache["path"].write_text((text + "\n") * 20)
    return _cache["path"]


def test_packing_after_pruning_is_checked_before_any_calibration(tmp_path, tiny_inputs, no_calibration):
    # Unpruned, every in_features of the tiny Llama (64, 96) packs as ternary (16 per word); pruned with
    # round_to=8, down_proj may be left with 8, 24, ... inputs.  The run must stop before calibrating.
    recipe = tiny_recipe(tiny_inputs, stages=[
        {"prune": {"sparsity": 0.3, "round_to": 8}},
        {"quantize": "ternary"},
    ])
    with pytest.raises(PreflightError) as err:
        compress.run(None, recipe, tmp_path / "run", progress=False, log=None)
    message = str(err.value)
    assert "no stage has started" in message
    assert "stage 2 (quantize) (ternary absmean per-tensor a16), at the narrowest widths pruning may leave" in message
    assert "model.layers.{0-1}.mlp.down_proj [64, 8]" in message and "round_to (now 8)" in message
    assert not (tmp_path / "run" / "stages").exists()


def test_a_group_size_that_does_not_divide_a_layer_is_listed_before_any_calibration(tmp_path, tiny_inputs, no_calibration):
    # compressed-tensors stores whole groups only.  The tiny Llama's down_proj has 96 inputs, which groups of 64
    # do not divide; pruned with round_to=32, down_proj and o_proj (one kv group: 32 inputs) may be left at 32.
    recipe = tiny_recipe(tiny_inputs, stages=[
        {"prune": {"sparsity": 0.3, "round_to": 32}},
        {"quantize": {"method": "int4", "group_size": 64}},
        {"export": ["compressed-tensors"]},
    ])
    with pytest.raises(PreflightError) as err:
        compress.run(None, recipe, tmp_path / "run", progress=False, log=None)
    message = str(err.value)
    assert ("stage 3 (export) as compressed-tensors: model.layers.0.mlp.down_proj, model.layers.1.mlp.down_proj have "
            "a partial last group (in_features not a multiple of the group size)") in message
    assert ("as compressed-tensors, at the narrowest widths pruning may leave (MLP widths multiples of round_to, one kv "
            "group per layer): model.layers.0.self_attn.o_proj, model.layers.0.mlp.down_proj, "
            "model.layers.1.self_attn.o_proj, model.layers.1.mlp.down_proj have a partial last group") in message
    assert not (tmp_path / "run").exists()


def test_without_the_exports_module_only_native_is_offered(monkeypatch):
    monkeypatch.setattr(exporting, "_exports", lambda: None)
    report = preflight(Recipe(stages=["int4", {"export": ["native", "hf"]}]), tiny_model("llama"), _splits(), CPU)
    assert report.problems == ["stage 2 (export): unknown export format 'hf'; this version writes native."]


def test_every_problem_is_listed_at_once():
    model = tiny_model("llama")
    recipe = Recipe(stages=[
        {"quantize": "int4"},
        {"export": ["native", "tflite"]},
        {"prune": {"sparsity": 0.99, "round_to": 64, "calib_seq_len": 64}},
        {"quantize": "ternary"},
    ])
    report = preflight(recipe, model, _splits(), CPU)
    text = " | ".join(report.problems)
    assert "stage 2 (export) comes before stage 4 (quantize); exports write the final model" in text
    assert "stages 1, 4 all quantise" in text
    assert "stage 3 (prune) prunes after stage 1 (quantize) quantised the model" in text
    assert "unknown export format 'tflite'" in text
    assert "calib_seq_len=64 is longer than the text's seq_len=32" in text
    assert "sparsity 0.99 cannot be reached; at most" in text
    with pytest.raises(PreflightError, match=r"found \d+ problem\(s\), and no stage has started: \(1\)"):
        report.raise_if_problems()


def test_qat_after_gptq_and_training_a_packed_model_are_refused():
    recipe = Recipe(stages=[{"quantize": "int4-gptq"}, {"recover": {"steps": 2}}, {"recover": {"steps": 2}}])
    text = " | ".join(preflight(recipe, tiny_model("llama"), _splits(), CPU).problems)
    assert "stage 1 (quantize) uses GPTQ and is followed by a recover stage" in text
    assert "stage 3 (recover) trains after stage 1 (quantize) was packed" in text


def test_hidden_state_distillation_after_dropping_layers_is_refused():
    recipe = Recipe(stages=[{"prune": {"sparsity": 0.3, "drop_layers": 1}}, {"recover": {"steps": 2, "hidden_weight": 1.0}}])
    text = " | ".join(preflight(recipe, tiny_model("llama"), _splits(), CPU).problems)
    assert "stage 2 (recover) matches the original's hidden states layer by layer (hidden_weight), but stage 1 " \
           "(prune) drops layers" in text
    kept = Recipe(stages=[{"prune": {"sparsity": 0.3}}, {"recover": {"steps": 2, "hidden_weight": 1.0}}])
    assert not any("hidden_weight" in p for p in preflight(kept, tiny_model("llama"), _splits(), CPU).problems)


def test_encoders_cannot_be_distilled_and_tied_heads_are_noted():
    recipe = Recipe(stages=[{"recover": {"steps": 2}}])
    report = preflight(recipe, tiny_model("bert-mlm"), _splits(), CPU)
    assert any("this model is an encoder; drop the stage" in p for p in report.problems)
    tied = preflight(Recipe(stages=[{"quantize": {"modules_to_not_convert": []}}]), tiny_model("llama"), _splits(), CPU)
    assert not tied.problems and any("tied to the input embeddings" in n for n in tied.notes)


def test_memory_beyond_the_machine_is_a_problem(monkeypatch):
    monkeypatch.setattr("compress.pipeline.memory.available_bytes", lambda device: 1000)
    report = preflight(load_recipe({"stages": [{"recover": {"steps": 2, "batch_size": 64}}]}), tiny_model("llama"), _splits(), CPU)
    assert any("the run needs about" in p and "at its peak (stage 1 (recover))" in p for p in report.problems)


def test_available_memory_is_read_from_the_machine():
    free = available_bytes(CPU)
    assert free is None or free > 0


def test_a_clean_recipe_passes_with_a_memory_estimate(tiny_inputs):
    recipe = load_recipe(tiny_recipe(tiny_inputs))
    report = preflight(recipe, tiny_model("llama"), _splits(), CPU)
    assert report.problems == [] and report.memory.peak > 2 * report.memory.weights
    assert "pre-flight check: passed" in report.summary()


def test_quantised_embeddings_are_checked_against_the_exports_before_the_run():
    recipe = load_recipe({"stages": [{"quantize": {"method": "int4", "group_size": 32, "embeddings": "int8"}},
                                     {"export": ["gguf", "hf", "gptq"]}]})
    problems = preflight(recipe, tiny_model("llama"), _splits(), CPU).problems
    assert len(problems) == 1 and "hold quantised embeddings, which the gptq format has no type for" in problems[0]
    bad = load_recipe({"stages": [{"quantize": {"method": "int4", "group_size": 32, "embeddings": "int4",
                                                "embedding_group_size": 128}}]})
    problems = preflight(bad, tiny_model("llama"), _splits(), CPU).problems
    assert any("embedding_group_size 128 does not divide the embedding width 64" in p for p in problems)


def test_a_text_longer_than_the_models_context_is_a_problem():
    model = tiny_model("llama")  # 256 positions
    ok = preflight(Recipe(stages=["int4"]), model, _splits(seq_len=256), CPU)
    assert not any("context" in p for p in ok.problems)
    report = preflight(Recipe(stages=["int4"]), model, _splits(seq_len=300), CPU)
    assert ("the text's seq_len 300 is longer than the model's context of 256 positions (max_position_embeddings); "
            "set text seq_len to at most 256.") in report.problems
