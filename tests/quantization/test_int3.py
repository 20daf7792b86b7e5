"""int3 weights (QuantConfig bits=3): the config, RTN and GPTQ codes, the module, checkpoints, exports, the CLI, budgets."""
import json

import pytest
import torch
from torch import nn

from compress.cli import main
from compress.errors import ConfigError
from compress.io import load, save
from compress.io.exports import ExportError, export, export_problems
from compress.quantization import QuantConfig, QuantError, QuantLinear, quantize
from compress.quantization.budget import check_budget, stored_file_bytes
from compress.quantization.gptq import gptq_quantize
from compress.quantization.quantizers import dequantize, quantize_weight
from tests.threads import one_torch_thread
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def _ids(n=4, length=32, seed=0):
    return torch.randint(3, 300, (n, length), generator=torch.Generator().manual_seed(seed))


def _kl(model, reference, ids):
    with torch.no_grad():
        p, q = reference(ids).logits.log_softmax(-1), model(ids).logits.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_config_bits_label_shorthands_and_bad_values():
    cfg = QuantConfig(bits=3, group_size=64, symmetric=False, zero_point="float")
    assert cfg.label() == "int3 g64 asym-float-zero rtn" and cfg.method == "int4"
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert QuantConfig().bits == 4 and QuantConfig(method="ternary").bits == 4
    from compress.quantization.config import resolve_config

    assert resolve_config("int3-gptq-asym") == QuantConfig(bits=3, gptq=True, symmetric=False)
    for bad in (2, 5, 8, True, "3"):
        with pytest.raises(ConfigError, match=r"^bits must be 4 \(int4\) or 3 \(int3\) for group-wise integer weights"):
            QuantConfig(bits=bad)
    with pytest.raises(ConfigError):  # a field of the int formats given to ternary
        QuantConfig(method="ternary", bits=3)


@pytest.mark.parametrize("symmetric, zero_point", [(True, "integer"), (False, "integer"), (False, "float")])
def test_rtn_codes_fit_three_bits_and_sit_between_int4_and_ternary(symmetric, zero_point):
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1))
    errors = {}
    for name, cfg in {"int4": QuantConfig(group_size=32, symmetric=symmetric, zero_point=zero_point),
                      "int3": QuantConfig(bits=3, group_size=32, symmetric=symmetric, zero_point=zero_point),
                      "ternary": QuantConfig(method="ternary", per_channel=True)}.items():
        q = quantize_weight(w, cfg)
        errors[name] = float((dequantize(q) - w).pow(2).mean())
        if name == "int3":
            assert q.bits == 3 and int(q.codes.max()) <= 7 and int(q.codes.max()) == 7
            if symmetric:  # the fixed offset 4: w = (code - 4) * scale
                s = q.scales.float().t().repeat_interleave(32, 1)
                assert q.zeros is None and torch.equal(dequantize(q), (q.codes.float() - 4) * s)
    assert errors["int4"] < errors["int3"] < errors["ternary"]


def test_gptq_int3_lowers_the_output_error_against_round_to_nearest():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated inputs
    w = torch.randn(32, 64, generator=g)
    H = x.t() @ x
    cfg = QuantConfig(bits=3, group_size=32, gptq=True, gptaq=False)
    gq = gptq_quantize(w, H.clone(), cfg)
    rq = quantize_weight(w, cfg)
    assert gq.bits == 3 and int(gq.codes.max()) <= 7

    def out_err(q):
        return float((x @ (dequantize(q) - w).t()).pow(2).mean())

    assert out_err(gq) < 0.8 * out_err(rq)


@pytest.mark.parametrize("config", ["int3", "int3-gptq-asym", QuantConfig(bits=3, group_size=32, zero_point="float",
                                                                           symmetric=False, progress=False)])
def test_a_model_quantised_to_int3_saves_loads_and_computes_the_same(config, tmp_path):
    original = tiny_model("llama")
    model = tiny_model("llama")
    quantize(model, config, data=_ids())
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.method == "int3" and m.fmt == "int3" for m in layers)
    assert all(abs(m.bits_per_weight() - 3.5) < 0.76 for m in layers)  # 3 bits + scales (and zero points) per group
    int4 = tiny_model("llama")
    quantize(int4, QuantConfig(group_size=32, progress=False))
    ids = _ids(2, 16, seed=5)
    assert 0 < _kl(int4, original, ids) < _kl(model, original, ids) < 1.0
    out = save(model, tmp_path / "m")
    assert '"method": "int3"' in json.dumps(json.loads((out / "compress.json").read_text()))
    loaded, _ = load(out)
    assert all(m.method == "int3" for m in loaded.modules() if isinstance(m, QuantLinear))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=0.05)  # bfloat16 leftovers
    assert stored_file_bytes(model) < stored_file_bytes(int4)


@pytest.mark.parametrize("symmetric", [True, False])
def test_every_export_but_bitnet_stores_int3_and_an_outside_loader_computes_the_same_logits(tmp_path, symmetric):
    model = tiny_model("llama")
    quantize(model, QuantConfig(bits=3, group_size=32, symmetric=symmetric, progress=False))
    for fmt in ("gptq", "compressed-tensors", "gguf", "hf"):
        report = export(model, tiny_tokenizer(), tmp_path / fmt, fmt, verify=True)
        assert "max |logit difference|" in report.check, fmt
    assert export(model, None, tmp_path / "ct-bytes", "compressed-tensors").layer_bits_per_weight < \
        export(_int4_twin(model), None, tmp_path / "ct-int4", "compressed-tensors").layer_bits_per_weight
    gguf_notes = " ".join(export(model, None, tmp_path / "g2", "gguf").notes)
    assert "int3 tensors are stored exactly in 4-bit blocks" in gguf_notes
    problems = export_problems(model, "bitnet")
    assert len(problems) == 1 and "hold int3 weights, which the BitNet format cannot store" in problems[0]


def _int4_twin(model):
    twin = tiny_model("llama")
    quantize(twin, QuantConfig(bits=4, group_size=32, progress=False))
    return twin


def test_gptq_refuses_a_model_mixing_int3_and_int4_and_compressed_tensors_stores_one_group_each(tmp_path):
    model = tiny_model("llama")
    quantize(model, QuantConfig(bits=3, group_size=32, overrides={"down_proj": QuantConfig(group_size=32)},
                                progress=False))
    problems = export_problems(model, "gptq")
    assert len(problems) == 1 and "mix group sizes, symmetry or bits" in problems[0]
    with pytest.raises(ExportError, match="mix group sizes, symmetry or bits"):
        export(model, None, tmp_path / "g", "gptq")
    assert not (tmp_path / "g").exists()
    export(model, tiny_tokenizer(), tmp_path / "ct", "compressed-tensors", verify=True)
    groups = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == [3, 4]


def test_cli_method_int3_and_its_export_refusal_as_bitnet(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "q3"
    assert main(["quantize", str(model_dir), "--method", "int3", "--group-size", "32", "--asymmetric",
                 "--zero-point", "float", "-o", str(out)]) == 0
    loaded, _ = load(out)
    layers = [m for m in loaded.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.label() == "int3 g32 asym" for m in layers)
    capsys.readouterr()
    assert main(["export", str(out), "--format", "bitnet", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "int3 weights" in err and "compress-lm export" in err and not (tmp_path / "b").exists()


def test_a_budget_reaches_below_int4_with_int3_and_uses_it(tmp_path):
    model = tiny_model("llama")
    int4_only = ("keep", "int4-g128", "int4-g64", "int4-g32", "embeddings-int8", "embeddings-int4")
    units, fixed, _ = check_budget(model, QuantConfig(target_size="1GiB", target_formats=int4_only))
    least_int4 = fixed + sum(min(o.bytes for o in u.options) for u in units)
    target = least_int4 - 2048
    with pytest.raises(Exception, match="allow smaller formats"):
        check_budget(model, QuantConfig(target_size=target, target_formats=int4_only))
    text = torch.randint(3, 300, (6, 32), generator=torch.Generator().manual_seed(0))
    report = quantize(model, QuantConfig(target_size=target, target_formats=int4_only + ("int3-g64", "int3-g32"),
                                         progress=False), data=text)
    assert report.predicted_bytes <= target
    assert any(m.method == "int3" for m in model.modules() if isinstance(m, QuantLinear))
    assert "3g" in report.table()
    assert sum(f.stat().st_size for f in save(model, tmp_path / "m").glob("*.safetensors")) <= target


def test_int3_is_a_default_budget_candidate_and_a_recipe_exporting_gguf_passes_preflight():
    from compress.pipeline import load_recipe, preflight
    from tests.quantization.test_budget import _splits

    assert {"int3-g128", "int3-g64", "int3-g32"} <= set(QuantConfig(target_size="1MiB").target_formats)
    recipe = load_recipe({"stages": [{"quantize": {"target_size": "80KiB"}},
                                     {"export": ["gguf"]}]})
    assert preflight(recipe, tiny_model("llama"), _splits(), torch.device("cpu")).problems == []
    bitnet = load_recipe({"stages": [{"quantize": {"target_size": "80KiB", "target_formats": ["keep", "int3-g64"]}},
                                     {"export": ["bitnet"]}]})
    problems = preflight(bitnet, tiny_model("llama"), _splits(), torch.device("cpu")).problems
    assert len(problems) == 1 and "target_formats allows int3-g64" in problems[0] and "int3 weights" in problems[0]


def test_a_linear_layer_whose_inputs_are_not_a_multiple_of_32_is_refused_before_any_weight_changes():
    model = nn.Sequential(nn.Linear(48, 8), nn.Linear(8, 64))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(QuantError) as err:
        quantize(model, QuantConfig(bits=3, group_size=16, modules_to_not_convert=(), progress=False))
    message = str(err.value)
    assert "2 modules cannot be quantised as asked" in message and "int3 packing needs in_features to be a " \
        "multiple of 32" in message and "quantise them to int4 instead" in message and message.count("\n") == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
