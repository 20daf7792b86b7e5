"""16-bit storage: what dtype checkpoints and exports store floats in, and that older float32 checkpoints still load."""
import json

import pytest
import torch
from safetensors import safe_open

from compress.cli import main
from compress.io import CheckpointError, load, save
from compress.io.exports import ExportError, export
from compress.io.manifest import MANIFEST
from compress.io.storage import StorageError, cast_state, stored_dtype
from compress.quantization import QuantConfig, quantize
from tests.tiny import as_stored, tiny_model

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def _out(model):
    with torch.no_grad():
        return model(input_ids=IDS)[0]


def _file_dtypes(directory):
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


@pytest.mark.parametrize("dtype,name", [(None, "BF16"), ("bfloat16", "BF16"), ("float16", "F16"), ("float32", "F32")])
def test_checkpoint_stores_floats_in_the_chosen_dtype_and_loads_float32(tmp_path, dtype, name):
    model = tiny_model("llama")
    save(model, tmp_path / "ck", dtype=dtype)
    assert set(_file_dtypes(tmp_path / "ck").values()) == {name}
    manifest = json.loads((tmp_path / "ck" / MANIFEST).read_text())
    assert manifest["format_version"] == 2 and manifest["dtype"] == (dtype or "bfloat16")
    again = load(tmp_path / "ck").model
    assert {p.dtype for p in again.parameters()} == {torch.float32}  # computes as before
    assert torch.equal(_out(again), _out(as_stored(model, stored_dtype(dtype))))
    if dtype == "float32":
        assert torch.equal(_out(again), _out(model))


def test_bfloat16_checkpoint_is_about_half_the_float32_one(tmp_path):
    model = tiny_model("llama")
    save(model, tmp_path / "b")
    save(model, tmp_path / "f", dtype="float32")
    b, f = (tmp_path / "b" / "model.safetensors").stat().st_size, (tmp_path / "f" / "model.safetensors").stat().st_size
    assert 0.45 < b / f < 0.55


def test_load_can_keep_the_stored_dtype(tmp_path):
    save(tiny_model("llama"), tmp_path / "ck")
    again = load(tmp_path / "ck", dtype=None).model
    assert {p.dtype for p in again.parameters()} == {torch.bfloat16}


def test_version_1_float32_checkpoints_keep_loading(tmp_path):
    """A checkpoint as the previous compress-lm wrote it: format_version 1, no dtype field, float32 tensors."""
    model = tiny_model("llama")
    save(model, tmp_path / "ck", dtype="float32")
    path = tmp_path / "ck" / MANIFEST
    m = json.loads(path.read_text())
    for key in ("dtype", "quantized_embeddings", "tied_head"):
        del m[key]
    m["format_version"] = 1
    path.write_text(json.dumps(m))
    assert torch.equal(_out(load(tmp_path / "ck").model), _out(model))


def test_packed_scales_keep_their_own_dtype(tmp_path):
    model = tiny_model("llama")
    quantize(model, QuantConfig(group_size=32, scale_dtype="float32", progress=False))
    save(model, tmp_path / "ck")
    dtypes = _file_dtypes(tmp_path / "ck")
    assert dtypes["model.layers.0.mlp.up_proj.scales"] == "F32" and dtypes["model.layers.0.mlp.up_proj.qweight"] == "I32"
    assert dtypes["model.norm.weight"] == "BF16"
    again = load(tmp_path / "ck").model
    assert again.model.layers[0].mlp.up_proj.scales.dtype == torch.float32
    assert torch.equal(_out(again), _out(as_stored(model)))


def test_cast_state_leaves_integers_and_kept_names():
    t = {"a": torch.ones(2), "b": torch.ones(2, dtype=torch.int32), "c.scales": torch.ones(2)}
    out = cast_state(t, torch.bfloat16, keep={"c.scales"})
    assert (out["a"].dtype, out["b"].dtype, out["c.scales"].dtype) == (torch.bfloat16, torch.int32, torch.float32)


@pytest.mark.parametrize("bad", ["int8", "float64", torch.int8, 3])
def test_an_unknown_storage_dtype_is_one_sentence(tmp_path, bad):
    with pytest.raises(StorageError, match=r"^Storage dtype .* is not one compress-lm writes; use one of bfloat16, float16, float32"):
        save(tiny_model("llama"), tmp_path / "ck", dtype=bad)
    assert not (tmp_path / "ck").exists()
    with pytest.raises(StorageError, match="is not one compress-lm writes"):
        export(tiny_model("llama"), None, tmp_path / "h", "hf", dtype=bad)


def test_a_manifest_with_an_unknown_dtype_is_refused(tmp_path):
    save(tiny_model("llama"), tmp_path / "ck")
    path = tmp_path / "ck" / MANIFEST
    m = json.loads(path.read_text())
    m["dtype"] = "int8"
    path.write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="field dtype must be one of float16, bfloat16, float32, got 'int8'"):
        load(tmp_path / "ck")


@pytest.mark.parametrize("command", [["quantize", "M", "--method", "int4"], ["export", "M", "--format", "hf"]])
def test_cli_dtype_must_be_a_storage_dtype(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "-o", str(tmp_path / "o"), "--dtype", "int8"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --dtype: invalid choice: 'int8'" in err and "bfloat16" in err


# -- exports -------------------------------------------------------------------------

def _int4_llama():
    model = tiny_model("llama")
    quantize(model, QuantConfig(group_size=32, progress=False))
    return model


@pytest.mark.parametrize("fmt,dtype,name", [("hf", None, "BF16"), ("hf", "float32", "F32"), ("gptq", None, "F16"),
                                            ("compressed-tensors", None, "BF16"), ("compressed-tensors", "float16", "F16")])
def test_exports_store_floats_in_the_chosen_dtype(tmp_path, fmt, dtype, name):
    model = _int4_llama() if fmt != "hf" else tiny_model("llama")
    report = export(model, None, tmp_path / "x", fmt, dtype=dtype)
    dtypes = _file_dtypes(tmp_path / "x")
    assert dtypes["model.norm.weight"] == name and dtypes["model.embed_tokens.weight"] == name
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    assert config["dtype"] == str(stored_dtype(dtype, fmt)).removeprefix("torch.")
    assert report.details["dtype"] == str(stored_dtype(dtype, fmt)).removeprefix("torch.")


@pytest.mark.parametrize("fmt", ["hf", "compressed-tensors"])
def test_bfloat16_exports_pass_the_outside_check(tmp_path, fmt):
    """verify=True: transformers loads the bfloat16 files; the reference holds the floats rounded as stored."""
    report = export(_int4_llama(), None, tmp_path / "x", fmt, verify=True)
    assert report.check and report.details["dtype"] == "bfloat16"


@pytest.mark.parametrize("dtype,kind", [(None, "F16"), ("bfloat16", "BF16"), ("float32", "F32")])
def test_gguf_float_tensors_follow_the_dtype(tmp_path, dtype, kind):
    import gguf

    report = export(tiny_model("llama"), None, tmp_path / "g", "gguf", dtype=dtype)
    reader = gguf.GGUFReader(str(tmp_path / "g" / report.details["gguf_file"]))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == kind and types["blk.0.ffn_up.weight"] == kind
    assert types["output_norm.weight"] == "F32"


def test_native_export_check_follows_the_stored_dtype(tmp_path):
    report = export(tiny_model("llama"), None, tmp_path / "n", "native", verify=True, dtype="float16")
    assert "rounded to float16" in report.check
    with pytest.raises(ExportError, match="Unknown export format"):
        export(tiny_model("llama"), None, tmp_path / "z", "zip")
