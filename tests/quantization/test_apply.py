"""quantize() on whole models: validation first, targeting, tied embeddings, the report, every family."""
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from compress.arch import adapter_for
from compress.quantization import QuantConfig, QuantError, QuantLinear, quantize

from tests.tiny import tiny_config, tiny_model

IDS = torch.randint(4, 300, (4, 16), generator=torch.Generator().manual_seed(0))


class Mlp(nn.Module):
    """Widths that group size 128 divides (the tiny models' 64 and 96 do not)."""

    def __init__(self, widths=(256, 384, 128)):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(widths[0], widths[1])
        self.down = nn.Linear(widths[1], widths[2], bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def quant_modules(model):
    return {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def llama_with_mlp(width: int, layers: int = 2) -> nn.Module:
    """The tiny Llama with another MLP width (the down projections' in_features)."""
    config = tiny_config("llama")
    config.intermediate_size, config.num_hidden_layers = width, layers
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).float().eval()


def test_validation_lists_every_offender_before_touching_a_weight():
    model = llama_with_mlp(100)  # down_proj [64, 100]: 100 inputs cannot be packed 8 to a word
    with pytest.raises(QuantError) as info:
        quantize(model, QuantConfig(group_size=32))
    msg = str(info.value)
    assert msg.startswith("2 modules cannot be quantised as asked: ")
    # both layers' down_proj, folded into one entry
    assert "model.layers.{0-1}.mlp.down_proj [64, 100] (int4 g32 sym rtn: int4 packing needs in_features to be a multiple of 8)" in msg
    assert "q_proj" not in msg.split("; fix:")[0]  # only the offenders are listed
    assert msg.endswith("fix: keep them in full precision with modules_to_not_convert=['down_proj'], "
                        "or prune their in_features to a multiple of 8.")
    assert not quant_modules(model)  # validation came first: nothing was converted


def test_offenders_in_a_few_layers_are_folded_exactly():
    model = llama_with_mlp(104, layers=4)  # 104 packs as int4 (8 per word) but not as ternary (16)
    cfg = QuantConfig(group_size=32, overrides={r"model\.layers\.[013]\.mlp\.down_proj": "ternary"})
    with pytest.raises(QuantError) as info:
        quantize(model, cfg)
    msg = str(info.value)
    assert msg.startswith("3 modules cannot be quantised as asked: model.layers.{0-1,3}.mlp.down_proj [64, 104] "
                          "(ternary absmean per-tensor a16: ternary packing needs in_features to be a multiple of 16)")
    assert "layers.2" not in msg
    assert "quantise them to int4 instead with overrides={'.*(model.layers.0.mlp.down_proj|" in msg
    assert msg.endswith("or prune their in_features to a multiple of 16.")


def test_the_suggested_fixes_work():
    model = llama_with_mlp(100)
    quantize(model, QuantConfig(group_size=32, modules_to_not_convert=["lm_head", "down_proj"], progress=False))
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear
    assert model.model.layers[0].mlp.up_proj.group_size == 32
    model = llama_with_mlp(104)
    quantize(model, QuantConfig(method="ternary", overrides={"down_proj": "int4"}, progress=False))
    assert model.model.layers[1].mlp.down_proj.method == "int4" and model.model.layers[1].mlp.up_proj.method == "ternary"


@pytest.mark.parametrize("group_size", [64, 128])
def test_group_sizes_that_do_not_divide_in_features_get_a_partial_last_group(llama, group_size):
    # in_features 64 and 96: G = 64 leaves a half group in down_proj; G = 128 is one partial group everywhere
    with torch.no_grad():
        before = llama(IDS).logits
    report = quantize(llama, QuantConfig(group_size=group_size, progress=False))
    down = llama.model.layers[0].mlp.down_proj
    assert down.group_size == group_size and down.scales.shape == (-(-96 // group_size), 64)
    assert torch.allclose(down(torch.eye(96)), down.dequantize_weight().t())  # the kernel reads the partial row
    with torch.no_grad():
        after = llama(IDS).logits
    assert len(report.modules) == 14 and report.bits_per_weight <= 4.3 + 16 / 64
    assert (after - before).abs().max() < 0.2 * before.abs().max()


def test_modules_to_not_convert_and_regex_overrides(llama):
    cfg = QuantConfig(
        group_size=32,
        modules_to_not_convert=["lm_head", r".*layers\.0\.self_attn\.q_proj"],
        overrides={r".*\.mlp\.(gate|up)_proj": "ternary", "layers.1.self_attn.o_proj": None},
    )
    report = quantize(llama, cfg)
    layer0, layer1 = llama.model.layers
    assert type(layer0.self_attn.q_proj) is nn.Linear
    assert type(layer1.self_attn.o_proj) is nn.Linear
    assert layer1.self_attn.q_proj.method == "int4"
    assert layer0.mlp.gate_proj.method == "ternary" and layer1.mlp.up_proj.method == "ternary"
    assert layer0.mlp.down_proj.method == "int4"
    skipped = dict(report.skipped)
    assert skipped["model.layers.0.self_attn.q_proj"].startswith("matches")
    assert skipped["model.layers.1.self_attn.o_proj"] == "an override keeps it in full precision"
    assert report.summary() == {"int4 g32 sym rtn": 8, "ternary absmean per-tensor a16 rtn": 4}


def test_tied_embeddings_are_left_alone(llama):
    embed = llama.model.embed_tokens.weight
    report = quantize(llama, QuantConfig(group_size=32, modules_to_not_convert=()))  # even when asked
    assert type(llama.lm_head) is nn.Linear and llama.lm_head.weight is embed
    assert dict(report.skipped)["lm_head"].startswith("tied to the input embeddings")
    assert dict(report.skipped)["model.embed_tokens"] == "embedding (never converted)"


def test_an_untied_output_head_is_kept_by_default_and_converted_on_request():
    model = tiny_model("mistral")  # tie_word_embeddings=False
    report = quantize(model, QuantConfig(group_size=32))
    assert type(model.lm_head) is nn.Linear and dict(report.skipped)["lm_head"].startswith("output head")
    model = tiny_model("mistral")
    quantize(model, QuantConfig(group_size=32, modules_to_not_convert=()))
    assert isinstance(model.lm_head, QuantLinear)


@pytest.mark.parametrize(
    "config, low, high",
    [("int4", 4.0, 4.3), ("int4-asym", 4.2, 4.3), ("ternary", 2.0, 2.1), (QuantConfig(method="ternary", per_channel=True), 2.0, 2.1)],
)
def test_bits_per_weight_come_from_the_stored_bytes(config, low, high):
    model = Mlp()
    report = quantize(model, config)
    stored = sum(b.nbytes for n, b in model.named_buffers() if not n.endswith("bias"))
    weights = 256 * 384 + 384 * 128
    assert report.weights_quantised == weights
    assert report.bits_per_weight == pytest.approx(8 * stored / weights)
    assert low <= report.bits_per_weight <= high
    assert report.params_after == report.params_before  # logical count unchanged
    assert report.bytes_after < report.bytes_before / (7 if report.bits_per_weight < 3 else 3.5)


def test_report_prints_as_a_table(llama):
    text = str(quantize(llama, QuantConfig(group_size=32, overrides={"down_proj": "ternary"})))
    rows = {line.split("  ")[1]: line.split()[-4:] for line in text.splitlines()[3:6]}
    assert text.startswith("quantisation (packed): int4 g32 sym rtn, 14 modules")
    assert rows["int4 g32 sym rtn"] == ["12", "49.2", "K", "4.500"]
    assert rows["ternary absmean per-tensor a16 rtn"] == ["2", "12.3", "K", "2.003"]
    assert rows["total"] == ["14", "61.4", "K", "4.001"]  # weighted by weights: (49.2 x 4.5 + 12.3 x 2.003) / 61.4
    assert "tied to the input embeddings" in text and "MiB ->" in text


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3", "bert", "bert-mlm"])
@pytest.mark.parametrize("config", ["ternary", QuantConfig(group_size=32, symmetric=False), QuantConfig(group_size=32, gptq=True)],
                         ids=["ternary", "int4-asym", "int4-gptq"])
def test_every_family_quantises_and_still_runs(family, config):
    model = tiny_model(family)
    with torch.no_grad():
        before = model(IDS)
    report = quantize(model, config, data=IDS)
    converted = quant_modules(model)
    assert set(adapter_for(model).projection_names()) <= converted
    assert len(report.modules) == len(converted)
    with torch.no_grad():
        out = model(IDS)
    key = "logits" if hasattr(out, "logits") else "last_hidden_state"
    assert torch.isfinite(out[key]).all()
    assert not torch.equal(out[key], before[key])


def test_quantising_twice_is_refused(llama):
    quantize(llama, QuantConfig(group_size=32))
    with pytest.raises(QuantError, match=r"14 modules are already quantised: model\.layers\.0\.self_attn\.q_proj \(int4 g32 sym\)"):
        quantize(llama, "ternary")


def test_nothing_to_quantise_warns(llama):
    with pytest.warns(UserWarning, match="no linear module"):
        report = quantize(llama, QuantConfig(group_size=32, modules_to_not_convert=[".*"]))
    assert report.modules == [] and report.bits_per_weight is None
