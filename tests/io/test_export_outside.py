"""Every export loads with a loader that is not compress-lm's and reproduces our logits.

The loaders run in one fresh process with ``import compress`` blocked (see
compress/io/exports/outside.py): transformers' ``from_pretrained`` (hf,
bitnet, compressed-tensors, and GGUF files through its GGUF loader), an
independent GPTQ unpacker, and gguf's own reader for the per-layer ``deci``
files.  Tolerance: 1e-3 x the largest |logit|, against what the format is meant
to compute (the model itself; int8 activations for BitLinear; float tensors
rounded as the GGUF stores them).  One process serves the whole batch, because
importing transformers is most of the time.
"""
import pytest
import safetensors.torch
import torch

from compress.errors import CompressError
from compress.io.exports import _WRITERS, export
from compress.io.exports.common import ExportError
from compress.io.exports.verify import TOLERANCE, check_many
from tests.io.test_export_formats import int4_llama, pruned_llama, ternary_llama, wide_ternary_llama
from tests.tiny import tiny_model


def _write(root, name, model, tokenizer, fmt, **options):
    path = root / name
    path.mkdir()
    return fmt, path, model, tokenizer, _WRITERS[fmt](model, tokenizer, path, str(path), **options)


def _corrupt_bitnet(job):
    """Swap two packed rows of one BitLinear weight: the file still loads, its logits must not pass."""
    _, path, *_ = job
    f = path / "model.safetensors"
    state = safetensors.torch.load_file(f)
    w = state["model.layers.0.mlp.down_proj.weight"]
    state["model.layers.0.mlp.down_proj.weight"] = torch.roll(w, 1, dims=1)
    safetensors.torch.save_file(state, f, metadata={"format": "pt"})
    return job


def _pruned_ternary():
    from compress.quantization import QuantConfig, quantize

    model = pruned_llama()
    quantize(model, QuantConfig(method="ternary", activations="a8", progress=False))
    return model


def mixed_int4_llama():
    """What a size budget leaves for compressed-tensors: int4 groups of 32 and 64, one projection kept float."""
    from compress.quantization import QuantConfig, quantize

    model = tiny_model("llama")
    quantize(model, QuantConfig(group_size=32, overrides={"k_proj": {"group_size": 64}, "v_proj": None},
                                progress=False))
    return model


def mixed_llama():
    """Every kind a size budget may mix, for GGUF: int4 sym / asym in several groups, ternary, float, int8 embeddings."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from compress.quantization import QuantConfig, quantize
    from tests.tiny import _DECODER_COMMON

    torch.manual_seed(0)
    config = LlamaConfig(**{**_DECODER_COMMON, "hidden_size": 256, "intermediate_size": 512, "head_dim": 64})
    model = AutoModelForCausalLM.from_config(config).float().eval()
    quantize(model, QuantConfig(group_size=32, embeddings="int8", progress=False, overrides={
        "k_proj": {"group_size": 64, "symmetric": False}, "v_proj": None, "o_proj": {"group_size": 128},
        "down_proj": "ternary"}))
    return model


BUILDERS = {"mixed_int4": mixed_int4_llama, "mixed": mixed_llama, "dense": lambda: tiny_model("llama"), "sym": lambda: int4_llama(True), "asym": lambda: int4_llama(False),
            "a8": lambda: ternary_llama("a8"), "a16": lambda: ternary_llama("a16"), "wide": wide_ternary_llama,
            "pruned": pruned_llama, "pruned_ternary": _pruned_ternary}


# case -> (model, format, options, what the check sentence names)
FAST_CASES = {
    "hf": ("dense", "hf", {}, "as LlamaForCausalLM"),
    "gptq-sym": ("sym", "gptq", {}, "independent GPTQ unpacker"),
    "ct-sym": ("sym", "compressed-tensors", {}, "transformers"),
    "gguf-q4_0": ("sym", "gguf", {}, "transformers"),
    "bitnet-a8": ("a8", "bitnet", {}, "14 BitLinear"),
    "ct-mixed": ("mixed_int4", "compressed-tensors", {}, "transformers"),
    "gguf-mixed": ("mixed", "gguf", {}, "transformers"),
}
SLOW_CASES = {
    "gguf-f16": ("dense", "gguf", {}, "transformers"),
    "gguf-q8_0": ("dense", "gguf", {"gguf_type": "q8_0"}, "transformers"),
    "hf-int4": ("sym", "hf", {}, "as LlamaForCausalLM"),
    "gptq-asym": ("asym", "gptq", {}, "independent GPTQ unpacker"),
    "ct-asym": ("asym", "compressed-tensors", {}, "transformers"),
    "gguf-q4_1": ("asym", "gguf", {}, "transformers"),
    "bitnet-a16": ("a16", "bitnet", {}, "14 BitLinear"),
    "gguf-tq2_0": ("wide", "gguf", {"gguf_type": "tq2_0"}, "transformers"),
    "gguf-tq1_0": ("wide", "gguf", {"gguf_type": "tq1_0"}, "transformers"),
    "hf-pruned": ("pruned", "hf", {}, "as CompressResizedModel"),
    "gguf-pruned": ("pruned", "gguf", {}, "gguf's GGUFReader"),
    "bitnet-pruned": ("pruned_ternary", "bitnet", {}, "21 BitLinear"),
}


def _check(root, tokenizer, cases, corrupt=False):
    needed = {m for m, *_ in cases.values()} | ({"a8"} if corrupt else set())
    models = {name: BUILDERS[name]() for name in needed}
    jobs = {case: _write(root, case, models[m], tokenizer, fmt, **opts) for case, (m, fmt, opts, _) in cases.items()}
    if corrupt:
        jobs["bitnet-corrupted"] = _corrupt_bitnet(_write(root, "bitnet-corrupted", models["a8"], tokenizer, "bitnet"))
    return dict(zip(jobs, check_many(list(jobs.values()), raise_errors=False)))


@pytest.fixture(scope="module")
def checked(tmp_path_factory, tokenizer):
    return _check(tmp_path_factory.mktemp("outside"), tokenizer, FAST_CASES, corrupt=True)


@pytest.fixture(scope="module")
def checked_slow(tmp_path_factory, tokenizer):
    return _check(tmp_path_factory.mktemp("outside-slow"), tokenizer, SLOW_CASES)


def _assert_loaded(result, names):
    assert isinstance(result, str), str(result)  # an ExportError here: no load, or logits beyond the tolerance
    assert "without compress-lm" in result and names in result
    diff = float(result.split("max |logit difference| ")[1].split()[0])
    tolerance = float(result.split("(tolerance ")[1].split(")")[0])
    assert diff <= tolerance and tolerance >= TOLERANCE
    return diff


@pytest.mark.parametrize("case", list(FAST_CASES))
def test_export_loads_outside_and_matches_logits(checked, case):
    diff = _assert_loaded(checked[case], FAST_CASES[case][3])
    assert diff < 1e-5  # the files hold exactly the model's values: only float op order may differ
    assert "tokenizer gives the same ids" in checked[case]


def test_a_corrupted_export_fails_the_check(checked):
    err = checked["bitnet-corrupted"]
    assert isinstance(err, ExportError) and isinstance(err, CompressError)
    assert "does not reproduce the model" in str(err)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_more_exports_load_outside_and_match_logits(checked_slow, case):
    diff = _assert_loaded(checked_slow[case], SLOW_CASES[case][3])
    if case in ("hf-int4", "gptq-asym", "gguf-q4_1", "gguf-tq2_0", "gguf-tq1_0", "hf-pruned", "bitnet-pruned"):
        assert diff < 1e-5
    # ct-asym goes through transformers' dequantize path, which computes the weights in the scales' float16
    if case == "bitnet-a16":  # BitLinear quantises activations; the model as it was did not
        assert "from the model as it was" in checked_slow[case]


def test_verify_runs_in_the_temporary_directory_and_a_failure_leaves_nothing(tmp_path, monkeypatch):
    import compress.io.exports.verify as verify

    seen = []

    def fake_check(fmt, directory, model, tokenizer, out):
        seen.append(directory)
        assert (directory / "model.safetensors").is_file() and directory != tmp_path / "bn"
        raise ExportError("logits differ")

    monkeypatch.setattr(verify, "check", fake_check)
    with pytest.raises(ExportError, match="logits differ"):
        export(ternary_llama("a8"), None, tmp_path / "bn", "bitnet", verify=True)
    assert seen and not (tmp_path / "bn").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(verify, "check", lambda *a: "checked.")
    assert export(ternary_llama("a8"), None, tmp_path / "bn", "bitnet", verify=True).check == "checked."


@pytest.mark.slow
def test_export_with_verify_runs_the_outside_loader(tmp_path, tokenizer):
    report = export(ternary_llama("a8"), tokenizer, tmp_path / "bn", "bitnet", verify=True)
    assert report.check.startswith("loaded by transformers") and "14 BitLinear" in report.check
    assert "check:" in report.summary() and (tmp_path / "bn" / "model.safetensors").is_file()


@pytest.mark.slow
def test_other_families_load_outside(tmp_path, tokenizer):
    from compress.quantization import QuantConfig, quantize

    def quantised(family, **cfg):
        model = tiny_model(family)
        quantize(model, QuantConfig(progress=False, **cfg))
        return model

    jobs = []
    for family in ("mistral", "qwen2", "qwen3", "gemma3"):
        jobs.append(_write(tmp_path, f"{family}-hf", tiny_model(family), tokenizer, "hf"))
        jobs.append(_write(tmp_path, f"{family}-bitnet", quantised(family, method="ternary", activations="a8"), tokenizer, "bitnet"))
        jobs.append(_write(tmp_path, f"{family}-ct", quantised(family, method="int4", group_size=32), tokenizer, "compressed-tensors"))
    jobs.append(_write(tmp_path, "bert-mlm-hf", tiny_model("bert-mlm"), tokenizer, "hf"))
    for family in ("mistral", "qwen2", "qwen3"):
        jobs.append(_write(tmp_path, f"{family}-gguf", quantised(family, method="int4", group_size=32), tokenizer, "gguf"))
        jobs.append(_write(tmp_path, f"{family}-gptq", quantised(family, method="int4", group_size=32, symmetric=False), tokenizer, "gptq"))
    for (fmt, path, *_), result in zip(jobs, check_many(jobs)):
        assert "without compress-lm" in result, (path.name, result)
