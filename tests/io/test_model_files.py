"""The one transformers-directory writer: the native checkpoint and every transformers-format export use it."""
import json

import pytest
import torch

import compress.io.model_files as model_files
from compress.io import load, save
from compress.io.exports import export
from compress.quantization import QuantConfig, quantize
from tests.tiny import tiny_model


@pytest.mark.parametrize("fmt", ["native", "hf", "gptq", "compressed-tensors"])
def test_native_and_exports_write_through_the_one_writer(tmp_path, monkeypatch, fmt):
    calls = []
    real = model_files.write_model_dir
    monkeypatch.setattr(model_files, "write_model_dir", lambda *a, **k: calls.append(k) or real(*a, **k))
    import compress.io.checkpoint as checkpoint
    import compress.io.exports.common as common

    monkeypatch.setattr(checkpoint, "write_model_dir", model_files.write_model_dir)
    monkeypatch.setattr(common, "write_model_dir", model_files.write_model_dir)
    model = tiny_model("llama")
    quantize(model, QuantConfig(method="int4", group_size=32, progress=False))
    if fmt == "native":
        save(model, tmp_path / fmt)
    else:
        export(model, None, tmp_path / fmt, fmt)
    assert len(calls) == 1
    assert calls[0].get("packed", False) is (fmt == "native")  # only compress-lm's own layout refuses stock layers


def test_shards_keep_order_and_size_limit():
    tensors = {f"t{i}": torch.zeros(100) for i in range(5)}  # 400 bytes each
    shards = model_files.shard(tensors, max_bytes=900)
    assert list(shards) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert [list(p) for p in shards.values()] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert list(model_files.shard(tensors)) == [model_files.WEIGHTS]


def test_a_stale_widths_key_is_not_written_for_packed_weights(tmp_path):
    from tests.io.test_export_formats import pruned_llama

    save(pruned_llama(), tmp_path / "pruned")
    assert "compress_layer_widths" in json.loads((tmp_path / "pruned" / "config.json").read_text())
    model = load(tmp_path / "pruned").model  # its config still carries the widths and auto_map
    quantize(model, QuantConfig(method="int4", group_size=16, progress=False))
    save(model, tmp_path / "packed")
    config = json.loads((tmp_path / "packed" / "config.json").read_text())
    assert "compress_layer_widths" not in config and config["model_type"] == "compress-lm"
    assert not (tmp_path / "packed" / "modeling_compress.py").exists()
    assert load(tmp_path / "packed").model.config.num_hidden_layers == 3
