"""Export layouts, read back by code that is not the exporter's: the formats' own unpackers or the documented layout.

These run in-process and fast; loading whole exports with outside loaders in a
fresh process (and comparing logits) is tests/io/test_export_outside.py.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from compress.io.exports import export
from compress.quantization import QuantConfig, quantize
from tests.threads import one_torch_thread
from tests.tiny import _DECODER_COMMON, as_stored, tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


# -- models the export tests share ---------------------------------------------

def int4_llama(symmetric=True, group_size=32, seed=0):
    model = tiny_model("llama", seed=seed)
    quantize(model, QuantConfig(method="int4", group_size=group_size, symmetric=symmetric, progress=False))
    return model


def ternary_llama(activations="a8", per_channel=False, family="llama"):
    model = tiny_model(family)
    quantize(model, QuantConfig(method="ternary", activations=activations, per_channel=per_channel, progress=False))
    return model


def wide_ternary_llama():
    """Rows of 256 and 512 inputs: whole TQ1_0 / TQ2_0 blocks."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**{**_DECODER_COMMON, "hidden_size": 256, "intermediate_size": 512, "head_dim": 64})
    model = AutoModelForCausalLM.from_config(config).float().eval()
    quantize(model, QuantConfig(method="ternary", progress=False))
    return model


def pruned_llama():
    """A Llama whose layers keep different kv groups, query heads and MLP channels, as pruning leaves them."""
    from compress.arch import adapter_for
    from compress.pruning.surgery import prune_mlp, shrink_linear
    from tests.pruning.helpers import gqa_model

    model = gqa_model("llama", layers=3, heads=6, kv=3, inter=256)  # head_dim 16, two query heads per kv head
    adapter = adapter_for(model)
    for i, groups, width in ((1, [0, 2], 128), (2, [1], 64)):
        part = adapter.layer(i)
        kv_rows = torch.cat([torch.arange(g * 16, (g + 1) * 16) for g in groups])
        q_rows = torch.cat([torch.arange(h * 16, (h + 1) * 16) for g in groups for h in (2 * g, 2 * g + 1)])
        for lin, rows in ((part.k, kv_rows), (part.v, kv_rows), (part.q, q_rows)):
            shrink_linear(lin, 0, rows)
        shrink_linear(part.o, 1, q_rows)
        adapter.set_attention_heads(i, 2 * len(groups), len(groups))
        prune_mlp(part, range(width))
    widths = adapter.describe()
    assert widths["mlp_width"] == [256, 128, 64] and widths["num_kv_heads"] == [3, 2, 1]
    return model


def _modules(model):
    from compress.io.exports.common import quantized_modules

    return list(quantized_modules(model).values())


def _weights(model):
    from compress.io.exports.common import quantized_modules

    return {n: m.dequantize_weight(torch.float32) for n, m in quantized_modules(model).items()}


# -- bitnet --------------------------------------------------------------------

def test_bitnet_weights_unpack_with_transformers_own_unpacker(tmp_path):
    from transformers.integrations.bitnet import unpack_weights

    # unpack_weights is @torch.compile'd: run the same code eagerly, without a CPU compile. (Patching
    # torch._dynamo.config.disable with monkeypatch left dynamo's config broken for later tests.)
    torch.compiler.set_stance("force_eager")
    try:
        _check_bitnet_weights(tmp_path, unpack_weights)
    finally:
        torch.compiler.set_stance("default")


def _check_bitnet_weights(tmp_path, unpack_weights):
    model = ternary_llama()
    export(model, None, tmp_path / "bn", "bitnet", dtype="float32")  # the layout; 16-bit storage: test_storage
    state = load_file(tmp_path / "bn" / "model.safetensors")
    config = json.loads((tmp_path / "bn" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitnet" and config["linear_class"] == "bitlinear"
    assert config["modules_to_not_convert"] == ["lm_head"]
    for name, w in _weights(model).items():
        packed, scale = state[f"{name}.weight"], state[f"{name}.weight_scale"]
        assert packed.dtype == torch.uint8 and packed.shape == (w.shape[0] // 4, w.shape[1])
        ternary = unpack_weights(packed, dtype=torch.float32)
        assert torch.allclose(ternary / scale.float(), w, rtol=1e-6, atol=0)  # BitLinear divides by weight_scale


def test_bitnet_a8_export_in_stock_transformers_gives_our_logits(tmp_path):
    """A ternary --a8 model exported as bitnet and run by transformers' own BitLinear computes what
    compress-lm evaluated: same activation quantisation, same rescale order, so the same bits in
    float32 (the order acc * (1/inv) * gamma differed in the last bit, which the next layer's int8
    rounding grew to a 2.4% logit gap on SmolLM2-135M)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(1)
    config = LlamaConfig(**{**_DECODER_COMMON, "num_hidden_layers": 6, "intermediate_size": 128})  # deeper: flips compound
    model = AutoModelForCausalLM.from_config(config).float().eval()
    quantize(model, QuantConfig(method="ternary", activations="a8", progress=False))
    export(model, None, tmp_path / "bn", "bitnet")  # floats stored bfloat16: compared with the model rounded so
    ids = torch.randint(0, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    torch.compiler.set_stance("force_eager")  # BitLinear's torch.compile: the same ops, without a CPU compile
    try:
        theirs_model = AutoModelForCausalLM.from_pretrained(tmp_path / "bn", dtype=torch.float32).eval()
        assert type(theirs_model.model.layers[0].mlp.down_proj).__name__ == "BitLinear"
        with torch.no_grad():
            theirs = theirs_model(input_ids=ids).logits
    finally:
        torch.compiler.set_stance("default")
    with torch.no_grad():
        ours = as_stored(model)(input_ids=ids).logits
    assert (ours - theirs).abs().max() <= 1e-6 * ours.abs().max()


def test_bitnet_a16_export_states_the_gap_stock_transformers_shows(tmp_path):
    """16-bit activations cannot be stored in BitLinear: the export says by how much its logits differ,
    and that figure is what transformers' own BitLinear gives on the same ids."""
    from transformers import AutoModelForCausalLM

    from compress.io.exports.verify import sample_ids

    model = ternary_llama("a16")
    report = export(model, None, tmp_path / "bn", "bitnet", dtype=torch.float32)  # the gap of the activations alone
    gap = report.details["a16_logit_gap"]
    [note] = [n for n in report.notes if "16-bit activations" in n]
    assert f"{gap:.1%}" in note and "--a8" in note and f"note: {note}" in report.summary()
    assert all(m.activations == "a16" for m in _modules(model))  # measured, then put back
    ids, _ = sample_ids(model, None)
    torch.compiler.set_stance("force_eager")
    try:
        theirs_model = AutoModelForCausalLM.from_pretrained(tmp_path / "bn", dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = theirs_model(input_ids=ids).logits
    finally:
        torch.compiler.set_stance("default")
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    actual = float((theirs - ours).norm() / ours.norm())
    assert actual > 1e-3 and abs(gap - actual) <= 1e-5 * actual + 1e-7


def test_bitnet_pack_matches_the_documented_example():
    from compress.io.exports.bitnet import pack_rows

    # transformers' pack_weights docstring: packed row 0 holds original rows 0, 2, 4, 6 for O = 8
    codes = torch.tensor([[1, 0], [0, 2], [0, 2], [0, 2], [2, 1], [1, 0], [2, 0], [2, 0]], dtype=torch.uint8)
    assert pack_rows(codes).tolist() == [[0b10100001, 0b00011000], [0b10010000, 0b00001010]]


# -- gptq ----------------------------------------------------------------------

def _gptq_dequant_numpy(state, name, v1):
    """AutoGPTQ's documented layout, unpacked with numpy only."""
    qweight, qzeros = state[f"{name}.qweight"].view(np.uint32), state[f"{name}.qzeros"].view(np.uint32)
    scales, g_idx = state[f"{name}.scales"].astype(np.float32), state[f"{name}.g_idx"]
    shifts = np.arange(8, dtype=np.uint32) * 4
    codes = ((qweight[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(-1, qweight.shape[1])  # [in, out]
    zeros = ((qzeros[:, :, None] >> shifts[None, None, :]) & 0xF).reshape(qzeros.shape[0], -1)  # [groups, out]
    zeros = zeros.astype(np.float32) + (1 if v1 else 0)
    return ((codes - zeros[g_idx]) * scales[g_idx]).T


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_tensors_follow_the_documented_layout(tmp_path, symmetric):
    model = int4_llama(symmetric=symmetric)
    export(model, None, tmp_path / "g", "gptq")
    state = load_numpy(str(tmp_path / "g" / "model.safetensors"))
    qcfg = json.loads((tmp_path / "g" / "quantize_config.json").read_text())
    assert qcfg == json.loads((tmp_path / "g" / "config.json").read_text())["quantization_config"]
    assert qcfg["bits"] == 4 and qcfg["group_size"] == 32 and qcfg["sym"] is symmetric and qcfg["desc_act"] is False
    v1 = qcfg["checkpoint_format"] == "gptq"
    for name, w in _weights(model).items():
        assert state[f"{name}.qweight"].dtype == np.int32 and state[f"{name}.scales"].dtype == np.float16
        assert state[f"{name}.g_idx"].tolist() == [k // 32 for k in range(w.shape[1])]
        np.testing.assert_allclose(_gptq_dequant_numpy(state, name, v1), w.numpy(), rtol=0, atol=1e-6)
    if symmetric:  # "gptq" v1 stores zero - 1: symmetric weights hold 7 in every field
        assert (state["model.layers.0.mlp.up_proj.qzeros"].view(np.uint32) == 0x77777777).all()


def test_gptq_partial_last_group_gets_its_own_g_idx(tmp_path):
    from compress.io.exports.gptq import gptq_state

    model = tiny_model("llama")
    quantize(model, QuantConfig(method="int4", group_size=64, progress=False, modules_to_not_convert=("lm_head",)))
    down = model.model.layers[0].mlp.down_proj  # in_features 96 = one group of 64 and a partial one of 32
    assert down.scales.shape[0] == 2
    tensors, _, _ = gptq_state(model, torch.float32)
    g_idx = tensors["model.layers.0.mlp.down_proj.g_idx"]
    assert g_idx.tolist() == [0] * 64 + [1] * 32


def _stream_codes_numpy(words, bits, count):
    """Code i of a dense little-endian bit stream: bits*i .. in word (bits*i)//32, spilling into the next word."""
    w = words.astype(np.uint64)
    out = np.zeros(w.shape[:-1] + (count,), dtype=np.int64)
    for i in range(count):
        word, offset = divmod(bits * i, 32)
        value = w[..., word] >> np.uint64(offset)
        if offset + bits > 32:
            value |= w[..., word + 1] << np.uint64(32 - offset)
        out[..., i] = (value & np.uint64((1 << bits) - 1)).astype(np.int64)
    return out


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_int3_straddles_words_as_autogptq_packs_three_bits(tmp_path, symmetric):
    model = tiny_model("llama")
    quantize(model, QuantConfig(bits=3, group_size=32, symmetric=symmetric, progress=False))
    export(model, None, tmp_path / "g", "gptq")
    state = load_numpy(str(tmp_path / "g" / "model.safetensors"))
    qcfg = json.loads((tmp_path / "g" / "quantize_config.json").read_text())
    assert qcfg["bits"] == 3 and qcfg["sym"] is symmetric
    v1 = qcfg["checkpoint_format"] == "gptq"
    for name, w in _weights(model).items():
        qweight, qzeros = state[f"{name}.qweight"].view(np.uint32), state[f"{name}.qzeros"].view(np.uint32)
        K, N = w.shape[1], w.shape[0]
        assert qweight.shape == (K * 3 // 32, N) and qzeros.shape == (K // 32, N * 3 // 32)
        codes = _stream_codes_numpy(qweight.T, 3, K).T  # [in, out]
        zeros = _stream_codes_numpy(qzeros, 3, N) + (1 if v1 else 0)  # [groups, out]
        g_idx, scales = state[f"{name}.g_idx"], state[f"{name}.scales"].astype(np.float32)
        ours = ((codes - zeros[g_idx]) * scales[g_idx]).T
        np.testing.assert_allclose(ours, w.numpy(), rtol=0, atol=1e-6)
        if symmetric:
            assert (zeros == 4).all()


# -- compressed-tensors --------------------------------------------------------

@pytest.mark.parametrize("symmetric", [True, False])
def test_compressed_tensors_unpack_with_the_package_itself(tmp_path, symmetric):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    model = int4_llama(symmetric=symmetric)
    export(model, None, tmp_path / "ct", "compressed-tensors")
    state = load_file(tmp_path / "ct" / "model.safetensors")
    qcfg = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    scheme = qcfg["config_groups"]["group_0"]["weights"]
    assert qcfg["format"] == "pack-quantized" and qcfg["ignore"] == ["lm_head"]
    assert scheme["strategy"] == "group" and scheme["group_size"] == 32 and scheme["symmetric"] is symmetric
    for name, w in _weights(model).items():
        shape = state[f"{name}.weight_shape"]
        q = unpack_from_int32(state[f"{name}.weight_packed"], 4, shape).float()  # signed -8..7
        scale = state[f"{name}.weight_scale"].float().repeat_interleave(32, dim=1)
        if symmetric:
            zero = 0.0
        else:
            zp = unpack_from_int32(state[f"{name}.weight_zero_point"], 4, (shape[0], shape[1] // 32), packed_dim=0)
            zero = zp.float().repeat_interleave(32, dim=1)
        assert torch.allclose((q - zero) * scale, w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_compressed_tensors_int3_unpacks_with_the_package_itself(tmp_path, symmetric):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    model = tiny_model("llama")
    quantize(model, QuantConfig(bits=3, group_size=32, symmetric=symmetric, progress=False))
    export(model, None, tmp_path / "ct", "compressed-tensors")
    state = load_file(tmp_path / "ct" / "model.safetensors")
    scheme = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["config_groups"]
    assert [g["weights"]["num_bits"] for g in scheme.values()] == [3]
    for name, w in _weights(model).items():
        shape = state[f"{name}.weight_shape"]
        q = unpack_from_int32(state[f"{name}.weight_packed"], 3, shape).float()  # signed -4..3
        scale = state[f"{name}.weight_scale"].float().repeat_interleave(32, dim=1)
        zero = 0.0
        if not symmetric:
            zp = unpack_from_int32(state[f"{name}.weight_zero_point"], 3, (shape[0], shape[1] // 32), packed_dim=0)
            zero = zp.float().repeat_interleave(32, dim=1)
        assert torch.allclose((q - zero) * scale, w, rtol=0, atol=1e-6)


# -- gguf ----------------------------------------------------------------------

def _gguf_tensors(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, gguf.dequantize(t.data, t.tensor_type)) for t in reader.tensors}, reader


def _unpermute(w, heads):
    """Undo convert_hf_to_gguf's q/k permutation (transformers' GGUF reader does the same)."""
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


@pytest.mark.parametrize("symmetric,gguf_type", [(True, "q4_0"), (False, "q4_1"), (True, "q4_1")])
def test_gguf_int4_blocks_dequantise_to_our_weights(tmp_path, symmetric, gguf_type):
    model = int4_llama(symmetric=symmetric)
    report = export(model, None, tmp_path / "g", "gguf", gguf_type=gguf_type)
    tensors, _ = _gguf_tensors(tmp_path / "g" / report.details["gguf_file"])
    assert tensors["blk.0.ffn_up.weight"][0] == gguf_type.upper() and tensors["token_embd.weight"][0] == "F16"
    w = _weights(model)
    up = tensors["blk.1.ffn_up.weight"][1]
    exact = np.abs(up - w["model.layers.1.mlp.up_proj"].numpy()).max()
    # Q4_0 holds symmetric int4 exactly; Q4_1 stores the offset -zero*scale in float16
    assert exact == 0 if gguf_type == "q4_0" else exact < 1e-3 * np.abs(up).max()
    q = _unpermute(tensors["blk.0.attn_q.weight"][1], heads=4)
    np.testing.assert_allclose(q, w["model.layers.0.self_attn.q_proj"].numpy(), rtol=0, atol=1e-3 * np.abs(q).max())


@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0"])
def test_gguf_ternary_blocks_are_exact(tmp_path, gguf_type):
    model = wide_ternary_llama()
    report = export(model, None, tmp_path / "g", "gguf", gguf_type=gguf_type)
    tensors, reader = _gguf_tensors(tmp_path / "g" / report.details["gguf_file"])
    w = _weights(model)
    kind, down = tensors["blk.0.ffn_down.weight"]
    assert kind == gguf_type.upper()
    assert np.array_equal(down, w["model.layers.0.mlp.down_proj"].numpy())
    k = _unpermute(tensors["blk.1.attn_k.weight"][1], heads=2)
    assert np.array_equal(k, w["model.layers.1.self_attn.k_proj"].numpy())
    bits = {"tq2_0": 66 * 8 / 256, "tq1_0": 54 * 8 / 256}[gguf_type]
    assert report.layer_bits_per_weight == pytest.approx(bits)
    assert report.details["tensor_types"] == {"F16": 1, gguf_type.upper(): 14, "F32": 5}


def test_gguf_ternary_rows_that_tq_cannot_hold_fall_back_to_exact_q4_0(tmp_path):
    model = ternary_llama(activations="a16")  # 64 inputs: not a multiple of 256
    report = export(model, None, tmp_path / "g", "gguf")
    assert report.details["gguf_type"] == "tq2_0" and report.details["tensor_types"]["Q4_0"] == 14
    assert any("stored as Q4_0 (exact)" in n for n in report.notes)
    tensors, _ = _gguf_tensors(tmp_path / "g" / report.details["gguf_file"])
    assert np.array_equal(tensors["blk.0.ffn_gate.weight"][1], _weights(model)["model.layers.0.mlp.gate_proj"].numpy())


def test_gguf_metadata_and_tokenizer(tmp_path, tokenizer):
    report = export(tiny_model("llama"), tokenizer, tmp_path / "g", "gguf")
    _, reader = _gguf_tensors(tmp_path / "g" / report.details["gguf_file"])
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("llama.block_count") == 2
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert field("llama.feed_forward_length") == 96 and field("llama.attention.key_length") == 16
    tokens = field("tokenizer.ggml.tokens")
    assert field("tokenizer.ggml.model") == "gpt2" and len(tokens) == 320
    assert tokens[:4] == ["<pad>", "<s>", "</s>", "<mask>"] and field("tokenizer.ggml.bos_token_id") == 1
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied embeddings: llama.cpp reuses token_embd


def test_gguf_pruned_model_writes_per_layer_arrays(tmp_path):
    from compress.arch import adapter_for

    model = pruned_llama()
    widths = adapter_for(model).describe()
    report = export(model, None, tmp_path / "g", "gguf")
    _, reader = _gguf_tensors(tmp_path / "g" / report.details["gguf_file"])
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "deci"
    assert field("deci.feed_forward_length") == widths["mlp_width"]
    assert field("deci.attention.head_count") == widths["num_heads"]
    assert field("deci.attention.head_count_kv") == widths["num_kv_heads"]
    assert any("'deci'" in n and "which llama.cpp runs" in n for n in report.notes)


# -- reports and the native format ---------------------------------------------

def test_report_lists_files_sizes_bits_and_how_to_load(tmp_path):
    model = int4_llama()
    report = export(model, None, tmp_path / "ct", "compressed-tensors")
    on_disk = {p.name: p.stat().st_size for p in (tmp_path / "ct").iterdir()}
    assert report.sizes == on_disk and report.files == sorted(on_disk)
    # int4 g32 with float16 scales: 4 + 16/32 bits per weight in the layers
    assert report.layer_bits_per_weight == pytest.approx(4.5, abs=0.05)
    assert 4.5 < report.bits_per_weight < 32
    text = report.table()
    assert "model.safetensors" in text and "bits per weight" in text and "from_pretrained" in text
    assert report.to_dict()["total_bytes"] == sum(on_disk.values())


def test_native_export_is_compress_save(tmp_path, tokenizer):
    from compress.io import load

    model = ternary_llama()
    report = export(model, tokenizer, tmp_path / "n", "native", verify=True)
    assert "compress.json" in report.sizes and "identical logits" in report.check
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "n").model(input_ids=ids).logits, as_stored(model)(input_ids=ids).logits)


def test_hf_export_writes_no_pickle_and_no_quantisation_config(tmp_path):
    export(int4_llama(), None, tmp_path / "h", "hf")
    names = {p.name for p in (tmp_path / "h").iterdir()}
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))}
    assert "quantization_config" not in json.loads((tmp_path / "h" / "config.json").read_text())
    state = load_file(tmp_path / "h" / "model.safetensors")
    assert not [k for k in state if k.endswith(("qweight", "scales", "zeros"))]
