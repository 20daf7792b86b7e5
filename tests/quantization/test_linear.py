"""QuantLinear: packed storage, forward through the kernel dispatch, counting, state dicts."""
import json

import pytest
import torch
from torch import nn

from compress.kernels.formats import unpack_int4, unpack_ternary
from compress.quantization import QuantConfig, QuantLinear
from compress.quantization.quantizers import dequantize, fake_quantize, quantize_weight
from compress.sizes import count_parameters

CONFIGS = [
    QuantConfig(group_size=32),
    QuantConfig(group_size=64, symmetric=False),
    QuantConfig(group_size=32, symmetric=False, zero_point="float"),
    QuantConfig(group_size=-1),
    QuantConfig(group_size=128),  # K = 192: one full group and a partial one of 64
    QuantConfig(group_size=128, symmetric=False),
    QuantConfig(method="ternary"),
    QuantConfig(method="ternary", scale="absmedian", per_channel=True),
    QuantConfig(method="ternary", activations="a8"),
]
IDS = ["int4-g32", "int4-g64-asym", "int4-g32-float-zero", "int4-per-channel", "int4-g128-partial",
       "int4-g128-partial-asym", "ternary", "ternary-median-rows", "ternary-a8"]


def linear(in_features=192, out_features=40, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_packed_codes_round_trip_bit_exactly(cfg):
    lin = linear()
    q = quantize_weight(lin.weight, cfg)
    ql = QuantLinear.from_linear(lin, cfg)
    if cfg.method == "int4":
        assert torch.equal(unpack_int4(ql.qweight), q.codes)
        assert torch.equal(ql.scales, q.scales)
    else:
        assert torch.equal(unpack_ternary(ql.qweight).to(torch.int8) - 1, q.codes)
        assert torch.equal(ql.scales, q.scale)
    assert torch.equal(ql.dequantize_weight(), dequantize(q))


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.activations == "a16"], ids=[i for i in IDS if i != "ternary-a8"])
def test_forward_equals_the_fake_quantised_linear(cfg):
    lin = linear()
    ql = QuantLinear.from_linear(lin, cfg)
    x = torch.randn(3, 7, 192)
    want = nn.functional.linear(x, fake_quantize(lin.weight, cfg)) + lin.bias
    assert torch.allclose(ql(x), want, atol=1e-6, rtol=1e-6)
    assert torch.equal(ql(x), ql(x))  # deterministic


def test_a8_forward_quantises_activations_per_token():
    cfg = QuantConfig(method="ternary", activations="a8")
    lin = linear(bias=False)
    ql = QuantLinear.from_linear(lin, cfg)
    x = torch.randn(5, 192)
    w = ql.dequantize_weight()
    a16 = x @ w.t()
    y = ql(x)
    assert not torch.equal(y, a16)  # int8 activations change the result a little ...
    assert torch.allclose(y, a16, rtol=0.05, atol=0.05 * a16.abs().max().item())  # ... but only a little


def test_sizes_count_logical_weights_and_bits_come_from_bytes():
    lin = linear(256, 64)
    ql = QuantLinear.from_linear(lin, QuantConfig(group_size=128))
    assert ql.logical_numel() == 256 * 64 + 64
    assert list(ql.parameters()) == []  # packed tensors are buffers
    model = nn.Sequential(ql)
    assert count_parameters(model) == (256 * 64 + 64, 256 * 64 + 64)
    # int32 [32, 64] words + fp16 [2, 64] scales over 256*64 weights: 4 + 16/128 bits
    assert ql.packed_bytes() == 32 * 64 * 4 + 2 * 64 * 2
    assert ql.bits_per_weight() == pytest.approx(4.125)
    tern = QuantLinear.from_linear(lin, QuantConfig(method="ternary"))
    assert tern.bits_per_weight() == pytest.approx(2 + 16 / (256 * 64))


@pytest.mark.parametrize("symmetric, bits", [(True, 4 + 16 * 5 / 576), (False, 4 + 32 * 5 / 576)])
def test_a_partial_last_group_is_counted_in_the_stored_bits(symmetric, bits):
    # SmolLM2's hidden size: 576 = 4 x 128 + 64, so five scale (and zero) rows per output
    ql = QuantLinear.from_linear(linear(576, 24), QuantConfig(group_size=128, symmetric=symmetric))
    assert ql.scales.shape == (5, 24) and ql.qweight.shape == (72, 24)
    assert ql.bits_per_weight() == pytest.approx(bits) and ql.bits_per_weight() <= 4.3


def test_partial_group_forward_equals_a_dense_matmul_built_from_the_codes():
    lin = linear(96, 40)
    cfg = QuantConfig(group_size=64, symmetric=False, clip_search=False)  # min-max ranges: every weight within a step
    ql = QuantLinear.from_linear(lin, cfg)
    q = quantize_weight(lin.weight, cfg)
    # column k uses group row k // 64: rows 0..63 -> 0, rows 64..95 -> 1 (the partial group)
    w = torch.stack([(q.codes[:, k].float() - q.zeros[k // 64].float()) * q.scales[k // 64].float() for k in range(96)], 1)
    x = torch.randn(5, 96)
    assert torch.allclose(ql(x), x @ w.t() + lin.bias, atol=1e-6, rtol=1e-6)
    assert (w - lin.weight).abs().max() <= q.scales.float().max() + 1e-6  # within one step (integer zero point)


def test_model_dtype_cast_keeps_the_stored_scales():
    ql = QuantLinear.from_linear(linear(), QuantConfig(group_size=32))
    scales = ql.scales.clone()
    ql.to(torch.bfloat16)
    assert ql.scales.dtype == torch.float16 and torch.equal(ql.scales, scales)
    assert ql.bias.dtype == torch.bfloat16
    assert ql(torch.randn(2, 192, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_state_dict_loads_into_an_empty_module(cfg):
    ql = QuantLinear.from_linear(linear(), cfg)
    empty = QuantLinear(**json.loads(json.dumps(ql.describe())))  # what a checkpoint manifest holds
    assert not torch.equal(empty.qweight, ql.qweight)
    empty.load_state_dict(ql.state_dict())
    x = torch.randn(4, 192)
    assert torch.equal(empty(x), ql(x))


def test_gradients_reach_the_input_through_a_frozen_packed_weight():
    ql = QuantLinear.from_linear(linear(), QuantConfig(group_size=32))
    x = torch.randn(4, 192, requires_grad=True)
    ql(x).sum().backward()
    assert torch.allclose(x.grad, ql.dequantize_weight().sum(0).expand(4, -1), atol=1e-5)


def test_repr_names_the_format():
    text = repr(QuantLinear.from_linear(linear(), QuantConfig(group_size=64, symmetric=False)))
    assert "int4, group_size=64, asymmetric" in text and "bits/weight" in text
    text = repr(QuantLinear.from_linear(linear(), QuantConfig(method="ternary", activations="a8")))
    assert "ternary, per-tensor scale, a8" in text
