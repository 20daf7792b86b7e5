"""Bad export requests: each refused with one sentence naming what is wrong and how to fix it, before any file is written."""
import pytest
import torch

import compress
from compress.cli import main
from compress.errors import CompressError
from compress.io.exports import EXPORT_FORMATS, ExportError, export, export_problems
from compress.quantization import QuantConfig, quantize
from tests.io.test_export_formats import int4_llama, pruned_llama, ternary_llama
from tests.threads import one_torch_thread
from tests.tiny import tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def _refused(model, fmt, match, tmp_path, **options):
    """The export raises ExportError matching ``match`` and leaves no directory behind."""
    with pytest.raises(ExportError, match=match) as err:
        export(model, None, tmp_path / "out", fmt, **options)
    assert isinstance(err.value, CompressError) and not (tmp_path / "out").exists()
    assert str(err.value).count("\n") == 0
    return str(err.value)


def test_every_format_is_listed_and_an_unknown_one_is_refused(tmp_path):
    assert EXPORT_FORMATS == ("native", "hf", "bitnet", "gptq", "compressed-tensors", "gguf")
    _refused(tiny_model("llama"), "onnx", r"Unknown export format 'onnx'; use one of native, hf, bitnet", tmp_path)


def test_fitting_models_have_no_problems():
    assert export_problems(tiny_model("llama"), "hf") == [] and export_problems(tiny_model("llama"), "gguf") == []
    assert export_problems(ternary_llama(), "bitnet") == [] and export_problems(int4_llama(), "gptq") == []
    assert export_problems(int4_llama(), "compressed-tensors") == [] and export_problems(int4_llama(), "gguf") == []


@pytest.mark.parametrize("build", [int4_llama, ternary_llama, pruned_llama, lambda: int4_llama(symmetric=False)])
def test_problems_read_shapes_only(build):
    """A recipe's pre-flight check asks on a skeleton whose tensors live on the meta device."""
    model = build()
    real = {fmt: export_problems(model, fmt) for fmt in EXPORT_FORMATS}
    meta = model.to("meta")
    assert {fmt: export_problems(meta, fmt) for fmt in EXPORT_FORMATS} == real


def test_fake_quantised_modules_must_be_packed_first(tmp_path):
    from compress.quantization import prepare_qat

    model = tiny_model("llama")
    prepare_qat(model, QuantConfig(method="ternary", progress=False))
    for fmt in ("hf", "bitnet", "gguf"):
        _refused(model, fmt, r"are still fake-quantised for training; pack them first with compress.quantize\(model\)",
                 tmp_path)


def test_not_a_transformers_model():
    assert "is not a transformers model" in export_problems(torch.nn.Linear(4, 4), "hf")[0]


# -- bitnet ----------------------------------------------------------------------

def test_bitnet_of_a_float_model_says_quantise_first(tmp_path):
    _refused(tiny_model("llama"), "bitnet", r"has no ternary modules; quantise it first \(compress-lm quantize MODEL "
             r"--method ternary --a8\), or export float weights with --format hf", tmp_path)


def test_bitnet_of_int4_points_at_int4_formats(tmp_path):
    _refused(int4_llama(), "bitnet", r"hold int4 weights, which the BitNet format cannot store; export them as "
             r"gptq, compressed-tensors or gguf", tmp_path)


def test_bitnet_needs_one_scale_per_tensor(tmp_path):
    _refused(ternary_llama(per_channel=True), "bitnet", r"one scale per output channel, but BitLinear holds one scale "
             r"per tensor; quantise with per_channel=False", tmp_path)


def test_bitnet_needs_out_features_divisible_by_four(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.tiny import tiny_config

    config = tiny_config("llama")
    config.intermediate_size = 90
    model = AutoModelForCausalLM.from_config(config).eval()
    quantize(model, QuantConfig(method="ternary", modules_to_not_convert=("lm_head", "down_proj"), progress=False))
    msg = _refused(model, "bitnet", r"have out_features not divisible by 4, which BitLinear's packed buffer needs", tmp_path)
    assert "mlp.gate_proj" in msg


# -- gptq and compressed-tensors ---------------------------------------------------

@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors"])
def test_int4_formats_do_not_quantise_by_themselves(tmp_path, fmt):
    _refused(tiny_model("llama"), fmt, rf"the model has no int4 weights; export does not quantise by itself .* quantise "
             rf"it first: compress-lm quantize MODEL --method int4 --group-size 128 \[--gptq\], then export the result as {fmt}",
             tmp_path)


@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors"])
def test_int4_formats_refuse_ternary_weights(tmp_path, fmt):
    _refused(ternary_llama(), fmt, rf"hold ternary weights, which {fmt} does not store; export ternary models as bitnet or gguf",
             tmp_path)


@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors"])
def test_int4_formats_refuse_fractional_zero_points(tmp_path, fmt):
    model = tiny_model("llama")
    quantize(model, QuantConfig(method="int4", group_size=32, symmetric=False, zero_point="float", progress=False))
    _refused(model, fmt, rf"have fractional zero points, which {fmt} cannot store; quantise with zero_point='integer'", tmp_path)


def test_gptq_refuses_mixed_group_sizes(tmp_path):
    model = tiny_model("llama")
    quantize(model, QuantConfig(method="int4", group_size=32, overrides={"down_proj": {"group_size": 16}}, progress=False))
    _refused(model, "gptq", r"mix group sizes, symmetry or bits .* but a GPTQ config has one of each", tmp_path)


def test_gptq_refuses_projections_that_differ_between_layers(tmp_path):
    model = tiny_model("llama")
    quantize(model, QuantConfig(method="int4", group_size=32, overrides={r"model\.layers\.1\.mlp\.up_proj": None},
                                progress=False))
    _refused(model, "gptq", r"different layers quantise different projections, but GPTQ's modules_in_block_to_quantize "
             r"applies to every layer; export as compressed-tensors", tmp_path)


def test_gptq_refuses_narrow_outputs(tmp_path):
    model = pruned_llama()  # layer 2 keeps one kv head: k_proj has 16 outputs
    quantize(model, QuantConfig(method="int4", group_size=32, progress=False))
    msg = _refused(model, "gptq", r"have out_features not a multiple of 32, which GPTQ loaders need for qzeros", tmp_path)
    assert "model.layers.2.self_attn.k_proj" in msg


def test_compressed_tensors_refuses_a_partial_last_group(tmp_path):
    model = int4_llama(group_size=64)  # down_proj has 96 inputs: one group of 64 and a partial one
    _refused(model, "compressed-tensors", r"mlp.down_proj have a partial last group .* which compressed-tensors "
             r"refuses; quantise with a group size that divides in_features", tmp_path)


# -- gguf ------------------------------------------------------------------------

def test_gguf_refuses_encoders_and_other_families(tmp_path):
    _refused(tiny_model("bert-mlm"), "gguf", r"GGUF export writes causal language models; this model is not one", tmp_path)
    _refused(tiny_model("gemma3"), "gguf", r"GGUF export supports model types llama, mistral, qwen2, qwen3, not "
             r"'gemma3_text'; export it as hf", tmp_path)


def test_gguf_refuses_sliding_window_attention(tmp_path):
    model = tiny_model("mistral")
    model.config.sliding_window = 32
    _refused(model, "gguf", r"uses sliding-window attention \(32 tokens\), which the 'llama' GGUF architecture does not have",
             tmp_path)


def test_gguf_per_layer_widths_only_for_llama_layouts(tmp_path):
    from tests.pruning.helpers import gqa_model
    from compress.arch import adapter_for
    from compress.pruning.surgery import prune_mlp

    model = gqa_model("qwen2", layers=2)
    prune_mlp(adapter_for(model).layer(1), range(64))
    _refused(model, "gguf", r"only llama.cpp's 'deci' architecture holds per-layer widths, for model types llama, "
             r"mistral, not 'qwen2'; prune with method='uniform' or export as hf", tmp_path)


@pytest.mark.parametrize("model,gguf_type,match", [
    ("float", "q4_0", r"q4_0 stores int4 weights but the model has none; quantise it first"),
    ("float", "tq2_0", r"tq2_0 stores ternary weights but the model has none; quantise it first .* or use gguf type f16"),
    ("int4", "tq1_0", r"hold int4 weights, which tq1_0 cannot store; use gguf type q4_0 or q4_1"),
    ("asym", "q4_0", r"are asymmetric int4, which Q4_0 cannot hold; use gguf type q4_1"),
    ("g16", "q4_0", r"have int4 groups smaller than or not aligned with GGUF's 32-weight blocks; quantise with group size 32"),
    ("float", "q5_k", r"GGUF type 'q5_k' is not one this exporter writes; use one of f16, q8_0, q4_0, q4_1, tq2_0, tq1_0"),
])
def test_gguf_types_that_cannot_hold_the_model(tmp_path, model, gguf_type, match):
    models = {"float": lambda: tiny_model("llama"), "int4": int4_llama, "asym": lambda: int4_llama(symmetric=False),
              "g16": lambda: int4_llama(group_size=16)}
    _refused(models[model](), "gguf", match, tmp_path, gguf_type=gguf_type)


def test_gguf_type_only_with_gguf(tmp_path):
    _refused(tiny_model("llama"), "hf", r"gguf_type applies to the gguf format only, not hf; drop it \(--gguf-type\) "
             r"or use --format gguf", tmp_path, gguf_type="q8_0")


def test_all_problems_come_in_one_message(tmp_path):
    model = tiny_model("llama")
    quantize(model, QuantConfig(method="int4", group_size=32, overrides={r".*\.mlp\..*": {"method": "ternary", "per_channel": True}},
                                progress=False))
    msg = _refused(model, "bitnet", r"hold int4 weights", tmp_path)
    assert "one scale per output channel" in msg and msg.count(";") >= 2


# -- output directories ----------------------------------------------------------

@pytest.mark.parametrize("fmt", ["hf", "gguf", "native"])
def test_existing_output_is_not_replaced_without_overwrite(tmp_path, fmt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CompressError, match=r"already exists; pass overwrite=True \(--force on the command line\)"):
        export(tiny_model("llama"), None, out, fmt)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(CompressError, match=r"not a compress-lm checkpoint or export .*; --force replaces only"):
        export(tiny_model("llama"), None, out, fmt, overwrite=True)  # a user's files are never replaced
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    export(tiny_model("llama"), None, out, fmt, overwrite=True)  # an empty directory holds nothing to lose
    export(tiny_model("llama", seed=1), None, out, fmt, overwrite=True)  # an earlier export is
    assert any(out.iterdir())


# -- command line ------------------------------------------------------------------

def test_cli_exports_a_quantised_checkpoint(tmp_path, tokenizer, capsys):
    compress.save(int4_llama(), tmp_path / "q", tokenizer)
    assert main(["export", str(tmp_path / "q"), "--format", "gguf", "-o", str(tmp_path / "g"), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "model.Q4_0.gguf" in out and "bits per weight" in out and "load it with: transformers" in out
    assert (tmp_path / "g" / "model.Q4_0.gguf").is_file()


def test_cli_refuses_existing_output_without_force(tmp_path, tiny_dir, capsys):
    (tmp_path / "o").mkdir()
    assert main(["export", str(tiny_dir), "--format", "hf", "-o", str(tmp_path / "o"), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compress-lm export: Output directory") and "--force" in err and err.count("\n") == 1
    assert main(["export", str(tiny_dir), "--format", "hf", "-o", str(tmp_path / "o"), "--no-verify", "--force",
                 "--dtype", "float16"]) == 0
    assert "16.00 bits per weight" in capsys.readouterr().out


def test_cli_says_why_a_format_cannot_hold_the_model(tmp_path, tiny_dir, capsys):
    assert main(["export", str(tiny_dir), "--format", "bitnet", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: transformers' loading progress bar
    assert err.startswith("compress-lm export: This model cannot be exported as bitnet: the model has no ternary modules")
    assert main(["export", str(tiny_dir), "--format", "hf", "--gguf-type", "q8_0", "-o", str(tmp_path / "b")]) == 2
    assert "gguf_type applies to the gguf format only" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
