"""Tampered, malformed and hostile checkpoints and exports: each refused in one sentence naming the file and field."""
import json

import pytest

import compress
from compress.cli import main
from compress.io import CheckpointError, load, save
from compress.io.atomic import sha256_file
from compress.io.exports import export
from compress.io.manifest import MANIFEST
from compress.models import ModelLoadError
from compress.quantization import QuantConfig, quantize
from tests.tiny import tiny_model


def _rehash(directory):
    """What an attacker does after editing files: make compress.json list them with their new hashes."""
    m = json.loads((directory / MANIFEST).read_text())
    m["files"] = {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
                  for f in sorted(directory.iterdir()) if f.is_file() and f.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps(m))


def _edit_manifest(directory, **changes):
    m = json.loads((directory / MANIFEST).read_text())
    m.update(changes)
    (directory / MANIFEST).write_text(json.dumps(m))


@pytest.fixture
def saved(tmp_path, tokenizer):
    save(tiny_model("llama"), tmp_path / "ck", tokenizer)
    return tmp_path / "ck"


# -- code shipped in a directory never runs ----------------------------------------------

def _plant_code(directory, marker):
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="evil-net", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"})
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")


def test_a_checkpoint_asking_to_run_its_code_is_refused_and_the_code_never_runs(saved, tmp_path, capsys):
    marker = tmp_path / "ran"
    _plant_code(saved, marker)
    _rehash(saved)
    with pytest.raises(CheckpointError, match=r"asks to run code shipped with it \(config.json names model_type 'evil-net', "
                                              r"which transformers does not know, and code in the directory \(auto_map\)\); "
                                              r"compress-lm never runs such code unless you opt in"):
        load(saved)
    assert main(["eval", str(saved), "--max-sequences", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trust_remote_code=True" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_tokenizer_asking_to_run_its_code_is_refused(saved, tmp_path):
    marker = tmp_path / "ran"
    config = json.loads((saved / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
    (saved / "tokenizer_config.json").write_text(json.dumps(config))
    (saved / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    _rehash(saved)
    with pytest.raises(CheckpointError, match=r"asks to run code shipped with it \(its tokenizer needs custom code\)"):
        load(saved)
    assert not marker.exists()


def test_a_plain_directory_asking_to_run_its_code_is_refused(tiny_dir, tmp_path):
    marker = tmp_path / "ran"
    _plant_code(tiny_dir, marker)
    with pytest.raises(ModelLoadError, match="asks to run code shipped with it"):
        compress.load_model(tiny_dir)
    assert not marker.exists()


# -- integrity checks cannot be skipped by removing the manifest -----------------------------

def test_a_checkpoint_without_its_manifest_is_refused_unless_verify_is_off(saved):
    f = saved / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    (saved / MANIFEST).unlink()
    with pytest.raises(ModelLoadError, match=r"was written by compress-lm \(config.json has compress_methods\) but has no "
                                             r"compress.json.*pass verify=False"):
        compress.load_model(saved)
    assert compress.load_model(saved, verify=False).model is not None


@pytest.mark.parametrize("name,content", [("added_tokens.json", '{"<evil>": 5}'),
                                          ("chat_template.jinja", "{{ 'pwned' }}"),
                                          ("special_tokens_map.json", "{}")])
def test_unlisted_files_transformers_would_read_are_refused(saved, name, content):
    (saved / name).write_text(content)
    with pytest.raises(CheckpointError, match=rf"holds {name}, which compress.json does not list and transformers would "
                                              rf"read; remove it"):
        load(saved)
    (saved / name).unlink()
    (saved / "README.md").write_text("notes")  # transformers reads no Markdown
    assert load(saved).model is not None


def test_an_export_is_checked_against_its_manifest(tmp_path, tokenizer):
    export(tiny_model("llama"), tokenizer, tmp_path / "hf", "hf")
    assert compress.load_model(tmp_path / "hf").model is not None
    from compress.io.audit import verify_directory

    assert verify_directory(tmp_path / "hf")[0].endswith("files match the sha256 in compress-export.json")
    f = tmp_path / "hf" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="model.safetensors does not match the sha256 in compress-export.json"):
        compress.load_model(tmp_path / "hf")
    (tmp_path / "hf" / "compress-export.json").unlink()  # the quantised model's config carries compress_methods
    model = tiny_model("llama")
    quantize(model, QuantConfig(method="int4", group_size=32, progress=False))
    model.config.compress_methods = [{"step": "quantize"}]
    export(model, tokenizer, tmp_path / "q", "hf")
    (tmp_path / "q" / "compress-export.json").unlink()
    with pytest.raises(ModelLoadError, match="has no compress.json"):
        compress.load_model(tmp_path / "q")


# -- the manifest's schema --------------------------------------------------------------

@pytest.mark.parametrize("value", [0, -7, True, "1", 1.5, None])
def test_format_version_must_be_an_integer_from_1(saved, value):
    _edit_manifest(saved, format_version=value)
    with pytest.raises(CheckpointError, match=r"compress.json' field format_version must be an integer >= 1, got "):
        load(saved)


@pytest.mark.parametrize("changes,field", [
    ({"tied": {"lm_head.weight": "model.nowhere.weight"}}, r"field tied\['lm_head.weight'\] names 'model.nowhere.weight'"),
    ({"tied": ["lm_head.weight"]}, "field tied must be a mapping, got list"),
    ({"layer_widths": {"num_heads": [4], "num_kv_heads": [2], "mlp_width": [96]}}, "field layer_widths lists 1 layers but config.json has 2"),
    ({"layer_widths": "wide"}, "field layer_widths must be a mapping or null, got str"),
    ({"layer_widths": {"num_heads": [4, 4], "num_kv_heads": [2, 2], "mlp_width": "96"}}, r"field layer_widths.mlp_width must be a list of integers"),
    ({"layer_widths": {"num_heads": [4, 4], "num_kv_heads": [2], "mlp_width": [96, 96]}}, "field layer_widths lists of different lengths"),
    ({"files": ["model.safetensors"]}, "field files must be a mapping, got list"),
    ({"files": {"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}}, r"field files\['../../etc/passwd'\] is not a plain file name"),
    ({"files": {"config.json": {"sha256": "nope", "bytes": 1}}}, r"field files\['config.json'\] must have a sha256 of 64 hex digits"),
    ({"quantized_modules": {"model.layers.0.mlp.up_proj": {"in_features": 64, "out_features": 96, "method": "int9"}}},
     r"field quantized_modules\['model.layers.0.mlp.up_proj'\] method must be int4, int3 or ternary"),
    ({"quantized_modules": {"model.nothing.here": {"in_features": 64, "out_features": 96}}},
     r"field quantized_modules\['model.nothing.here'\] does not fit the model"),
    ({"quantized_modules": {"x": {"in_features": "64", "out_features": 96}}}, r"in_features must be an integer >= 1, got '64'"),
    ({"methods": "prune"}, "field methods must be a list of mappings"),
    ({"architectures": ["BertModel"]}, r"field architectures \['BertModel'\] differs from config.json's"),
    ({"layer_widths": {"num_heads": [0, 4], "num_kv_heads": [0, 2], "mlp_width": [96, 96]}},
     "field layer_widths gives layer 0 0 heads and 0 kv heads, not a whole number"),
    ({"layer_widths": {"num_heads": [1, 4], "num_kv_heads": [2, 2], "mlp_width": [96, 96]}},
     "field layer_widths gives layer 0 1 heads and 2 kv heads"),
])
def test_malformed_manifests_name_the_file_and_the_field(saved, changes, field):
    _edit_manifest(saved, **changes)
    with pytest.raises(CheckpointError, match=r"compress.json'? .*" + field) as info:
        load(saved)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_packed_modules_must_fit_the_widths_they_replace(tmp_path):
    model = tiny_model("llama")
    quantize(model, QuantConfig(method="int4", group_size=32, progress=False))
    save(model, tmp_path / "ck")
    m = json.loads((tmp_path / "ck" / MANIFEST).read_text())
    m["layer_widths"]["num_heads"] = [1_000_000, 4]  # attention attributes would be set to nonsense
    m["layer_widths"]["num_kv_heads"] = [2, 2]
    (tmp_path / "ck" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=r"field quantized_modules\['model.layers.0.self_attn.[qo]_proj'\] does not "
                                              r"fit the model \(it is [0-9x ]*16000000[0-9x ]* in the model, 64 x 64 here\)"):
        load(tmp_path / "ck")


@pytest.mark.parametrize("changes,message", [
    ({"vocab_size": -5}, "config.json does not describe a model transformers can build"),
    ({"num_hidden_layers": 1_000_000}, "field layer_widths lists 2 layers but config.json has 1000000"),  # refused before building
])
def test_a_rehashed_config_that_cannot_be_built_is_refused(saved, changes, message):
    config = json.loads((saved / "config.json").read_text())
    config.update(changes)
    (saved / "config.json").write_text(json.dumps(config))
    _rehash(saved)
    with pytest.raises(CheckpointError, match=message):
        load(saved)


def test_a_huge_value_in_the_manifest_is_quoted_short(saved):
    _edit_manifest(saved, format_version="9" * 1_000_000)
    with pytest.raises(CheckpointError) as info:
        load(saved)
    assert len(str(info.value)) < 300


def test_a_corrupt_shard_index_is_refused(tmp_path):
    save(tiny_model("mistral"), tmp_path / "ck", max_shard_bytes=20_000)
    (tmp_path / "ck" / "model.safetensors.index.json").write_text('{"weight_map": 5}')
    _rehash(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="model.safetensors.index.json has no readable weight_map"):
        load(tmp_path / "ck")


def test_verify_command_checks_every_file_and_prints_the_modeling_file_hash(tmp_path, capsys):
    from torch import nn

    from compress.arch import adapter_for

    model = tiny_model("llama")
    part = adapter_for(model).layer(1)  # a narrower MLP in layer 1: the checkpoint ships modeling_compress.py
    for lin in part.mlp_in:
        lin.weight = nn.Parameter(lin.weight[:40].clone())
        lin.out_features = 40
    part.mlp_out.weight = nn.Parameter(part.mlp_out.weight[:, :40].clone())
    part.mlp_out.in_features = 40
    save(model, tmp_path / "ck")
    assert main(["verify", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    digest = sha256_file(tmp_path / "ck" / "modeling_compress.py")
    assert "files match the sha256 in compress.json" in out and f"modeling_compress.py sha256 {digest}" in out
    (tmp_path / "ck" / "modeling_compress.py").write_text("import os\n")
    assert main(["verify", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "modeling_compress.py has" in err
    assert main(["verify", str(tmp_path)]) == 2
    assert "is not a compress-lm checkpoint, export or run" in capsys.readouterr().err
