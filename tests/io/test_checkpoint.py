import json

import pytest
import torch
from torch import nn

import compress.io.model_files as model_files
from compress.arch import adapter_for
from compress.io import FORMAT_VERSION, CheckpointError, load, save
from compress.errors import CompressError
from compress.io.manifest import MANIFEST
from tests.tiny import ALL_FAMILIES, as_stored, tiny_model

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def _out(model):
    with torch.no_grad():
        return model(input_ids=IDS)[0]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_round_trip_gives_identical_outputs(family, tmp_path, tokenizer):
    model = tiny_model(family)
    save(model, tmp_path / "ck", tokenizer)
    again, tok = load(tmp_path / "ck")
    assert type(again) is type(model)
    assert torch.equal(_out(again), _out(as_stored(model)))  # floats stored bfloat16, computed float32
    assert adapter_for(again).tied_embeddings == adapter_for(model).tied_embeddings
    assert tok is not None and tok("Shall I")["input_ids"] == tokenizer("Shall I")["input_ids"]


def test_manifest_lists_every_file_with_its_hash(tmp_path):
    save(tiny_model("llama"), tmp_path / "ck")
    manifest = json.loads((tmp_path / "ck" / MANIFEST).read_text())
    on_disk = {p.name for p in (tmp_path / "ck").iterdir()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk and "model.safetensors" in on_disk
    assert manifest["format_version"] == FORMAT_VERSION and manifest["family"] == "llama-style"
    assert manifest["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert manifest["layer_widths"]["mlp_width"] == [96, 96]


def test_no_pickle_files(tmp_path, tokenizer):
    save(tiny_model("llama"), tmp_path / "ck", tokenizer)
    assert not [p for p in (tmp_path / "ck").iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_sharded_checkpoint_round_trips(tmp_path):
    model = tiny_model("mistral")
    save(model, tmp_path / "ck", max_shard_bytes=20_000)
    files = sorted(p.name for p in (tmp_path / "ck").glob("model-*.safetensors"))
    assert len(files) > 2 and (tmp_path / "ck" / "model.safetensors.index.json").is_file()
    assert torch.equal(_out(load(tmp_path / "ck").model), _out(as_stored(model)))


def test_pruned_widths_reload(tmp_path):
    """Layers of different widths (as pruning leaves them) come back with the same shapes and outputs."""
    model = tiny_model("llama")
    a = adapter_for(model)
    part = a.layer(1)
    keep = torch.arange(40)
    for lin in part.mlp_in:
        lin.weight = nn.Parameter(lin.weight[keep].clone())
        lin.out_features = 40
    part.mlp_out.weight = nn.Parameter(part.mlp_out.weight[:, keep].clone())
    part.mlp_out.in_features = 40
    # drop kv group 1 of layer 0 (kv head 1, query heads 2 and 3)
    p0 = a.layer(0)
    for lin, rows in ((p0.k, slice(0, 16)), (p0.v, slice(0, 16)), (p0.q, slice(0, 32))):
        lin.weight = nn.Parameter(lin.weight[rows].clone())
        lin.out_features = lin.weight.shape[0]
    p0.o.weight = nn.Parameter(p0.o.weight[:, :32].clone())
    p0.o.in_features = 32
    a.set_attention_heads(0, 2, 1)
    expected = _out(as_stored(model))
    save(model, tmp_path / "ck")
    again = load(tmp_path / "ck").model
    d = adapter_for(again).describe()
    assert d["mlp_width"] == [96, 40] and d["num_heads"] == [2, 4] and d["num_kv_heads"] == [1, 2]
    assert torch.equal(_out(again), expected)


# -- safety --------------------------------------------------------------------

def test_existing_directory_is_not_overwritten(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "precious.txt").write_text("keep me")
    with pytest.raises(CompressError, match="already exists; pass overwrite=True"):
        save(tiny_model("llama"), tmp_path / "ck")
    assert (tmp_path / "ck" / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces_a_checkpoint_but_not_one_with_unlisted_files(tmp_path):
    save(tiny_model("llama", seed=0), tmp_path / "ck")
    model = tiny_model("llama", seed=1)
    save(model, tmp_path / "ck", overwrite=True)
    assert torch.equal(_out(load(tmp_path / "ck").model), _out(as_stored(model)))
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary or backup directories left
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    with pytest.raises(CompressError, match=r"holds files its compress.json does not list \(notes.txt\); --force will not"):
        save(tiny_model("llama", seed=2), tmp_path / "ck", overwrite=True)
    assert (tmp_path / "ck" / "notes.txt").read_text() == "mine"


def test_interrupted_save_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    old = tiny_model("llama", seed=0)
    save(old, tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_files, "shard", crash)
    with pytest.raises(KeyboardInterrupt):
        save(tiny_model("llama", seed=1), tmp_path / "ck", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    with pytest.raises(KeyboardInterrupt):
        save(tiny_model("llama"), tmp_path / "new", overwrite=True)
    assert not (tmp_path / "new").exists()


@pytest.fixture
def saved(tmp_path):
    save(tiny_model("llama"), tmp_path / "ck")
    return tmp_path / "ck"


def test_truncated_weights_are_refused(saved):
    f = saved / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors has 1000 bytes but compress.json recorded \d+; the file is truncated"):
        load(saved)


def test_tampered_weights_are_refused(saved):
    f = saved / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors does not match the sha256 in compress.json"):
        load(saved)


def test_missing_file_is_refused(saved):
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="is missing config.json, which compress.json lists"):
        load(saved)


def test_newer_format_version_says_so(saved):
    m = json.loads((saved / MANIFEST).read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (saved / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=f"checkpoint format {FORMAT_VERSION + 1}, newer than .*upgrade compress-lm"):
        load(saved)


def test_corrupt_manifest_is_refused(saved):
    (saved / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        load(saved)


def test_inconsistent_shapes_are_refused(saved):
    m = json.loads((saved / MANIFEST).read_text())
    m["layer_widths"]["mlp_width"] = [64, 96]  # the stored tensors are 96 wide
    (saved / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="do not fit the model its config and compress.json describe"):
        load(saved)


def test_plain_hf_directory_is_not_a_checkpoint(tiny_dir):
    with pytest.raises(CheckpointError, match="is not a compress-lm checkpoint .* compress.load_model"):
        load(tiny_dir)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_output_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CompressError, match="is a file; give a directory"):
        save(tiny_model("llama"), f)


def _shrink_layer1_mlp(model, width=40):
    part = adapter_for(model).layer(1)
    for lin in part.mlp_in:
        lin.weight = nn.Parameter(lin.weight[:width].clone())
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias[:width].clone())
        lin.out_features = width
    part.mlp_out.weight = nn.Parameter(part.mlp_out.weight[:, :width].clone())
    part.mlp_out.in_features = width


@pytest.mark.parametrize("family", ["llama", "gemma3", "bert-mlm"])
def test_non_uniform_checkpoint_loads_in_plain_transformers(family, tmp_path):
    """Without compress importable, from_pretrained(trust_remote_code=True) rebuilds the widths."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    model = tiny_model(family)
    _shrink_layer1_mlp(model)
    save(model, tmp_path / "ck")
    save_file({"out": _out(as_stored(model)).contiguous()}, tmp_path / "expected.safetensors")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["compress_layer_widths"]["intermediate_size"] == [96, 40]
    assert (tmp_path / "ck" / "modeling_compress.py").is_file() and "auto_map" in cfg
    auto = "AutoModelForCausalLM" if family != "bert-mlm" else "AutoModelForMaskedLM"
    script = f"""
import sys
sys.modules["compress"] = None  # make any import of compress fail
import torch, transformers
from safetensors.torch import load_file
m = transformers.{auto}.from_pretrained({str(tmp_path / 'ck')!r}, trust_remote_code=True, dtype=torch.float32).eval()
with torch.no_grad():
    out = m(input_ids=torch.tensor({IDS.tolist()}))[0]
expected = load_file({str(tmp_path / 'expected.safetensors')!r})["out"]
print("MAXDIFF", (out - expected).abs().max().item())
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    diff = float(res.stdout.split("MAXDIFF")[1])
    assert diff < 1e-5


def test_uniform_checkpoint_has_no_remote_code(tmp_path):
    save(tiny_model("llama"), tmp_path / "ck")
    assert not (tmp_path / "ck" / "modeling_compress.py").exists()
    assert "auto_map" not in json.loads((tmp_path / "ck" / "config.json").read_text())
