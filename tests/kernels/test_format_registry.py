"""The format classes and their registry (compress.kernels.formats) agree with the layout functions."""
import pytest
import torch

from compress.kernels import formats, reference
from compress.kernels.formats import (
    FORMATS,
    Int4Format,
    Int4RowsFormat,
    Int8RowsFormat,
    TernaryA8Format,
    TernaryFormat,
    embedding_format,
    get_format,
    linear_format,
)
from compress.kernels.tuning import KERNELS, kernel_for
from compress.quantization.embedding import QuantEmbedding, quantize_rows
from compress.quantization.linear import QuantLinear


def _int4(N=24, K=96, G=32, asym=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (N, K), generator=g)
    s = torch.rand(-(-K // G), N, generator=g) + 0.1
    z = torch.randint(0, 16, s.shape, generator=g).float() if asym else None
    return q, s, z


def test_the_registry_names_every_layout_once():
    assert list(FORMATS) == ["int4", "int3", "ternary", "ternary_a8", "int8_rows", "int4_rows"]
    assert all(get_format(name) is cls and cls.name == name for name, cls in FORMATS.items())
    assert formats.LINEAR_FORMATS == ("int4", "int3", "ternary", "ternary_a8")
    assert formats.ROW_FORMATS == ("int8_rows", "int4_rows")


@pytest.mark.parametrize("name, kind, names", [
    ("int2", None, "int4, int3, ternary, ternary_a8, int8_rows, int4_rows"),
    ("int8_rows", "linear", "int4, int3, ternary, ternary_a8"),
    ("int4", "embedding", "int8_rows, int4_rows"),
])
def test_an_unknown_format_is_one_sentence(name, kind, names):
    with pytest.raises(ValueError, match=rf"^unknown packed format '{name}'; use one of {names}\.$"):
        get_format(name, kind)


def test_int4_through_the_class_equals_the_layout_functions():
    q, s, z = _int4()
    packed = Int4Format.pack(q)
    assert torch.equal(packed, formats.pack_int4(q))
    assert torch.equal(Int4Format.unpack(packed, 96).long(), q)
    for zeros in (z, None):
        want = formats.dequantize_int4(packed, s, zeros, 32, dtype=torch.float32)
        assert torch.equal(Int4Format.dequantize_packed(packed, s, zeros, 32, torch.float32), want)
        assert torch.equal(Int4Format(group_size=32, symmetric=zeros is None).dequantize(packed, s, zeros, torch.float32),
                           want)
        x = torch.randn(3, 96)
        assert torch.allclose(Int4Format.reference(x, packed, s, zeros, 32), x @ want.t(), atol=1e-4)
    assert Int4Format.check(packed, s, z, 32) == (24, 96)


@pytest.mark.parametrize("cls", [TernaryFormat, TernaryA8Format])
def test_ternary_through_the_class_equals_the_layout_functions(cls):
    c = torch.randint(0, 3, (24, 64), generator=torch.Generator().manual_seed(1))
    scale = torch.rand(24) + 0.5
    packed = cls.pack(c)
    assert torch.equal(packed, formats.pack_ternary(c)) and torch.equal(cls.unpack(packed).long(), c)
    want = formats.dequantize_ternary(packed, scale, dtype=torch.float32)
    assert torch.equal(cls.dequantize_packed(packed, scale, None, 0, torch.float32), want)
    assert cls.check(packed, scale, None, 0) == (24, 64)
    with pytest.raises(ValueError, match="ternary weights have no zero points"):
        cls.check(packed, scale, torch.zeros(1, 24), 0)
    x = torch.randn(5, 64)
    if cls is TernaryFormat:
        assert torch.allclose(cls.reference(x, packed, scale, None, 0), x @ want.t(), atol=1e-4)
    else:  # int8 activations: BitLinear's arithmetic, close to the float product but not equal
        y = cls.reference(x, packed, scale, None, 0)
        assert torch.equal(y, reference.ternary_matmul_a8(x, packed, scale))
        assert not torch.equal(y, x @ want.t()) and torch.allclose(y, x @ want.t(), rtol=0.05, atol=0.05 * y.abs().max())


def test_the_kernels_each_format_dispatches_to():
    assert KERNELS == {
        "int4_gemv": ("int4", "gemv"), "int4_splitk": ("int4", "splitk"), "int4_gemm": ("int4", "gemm"),
        "int3_gemv": ("int3", "gemv"), "int3_splitk": ("int3", "splitk"), "int3_gemm": ("int3", "gemm"),
        "ternary_gemv": ("ternary", "gemv"), "ternary_splitk": ("ternary", "splitk"),
        "ternary_gemm": ("ternary", "gemm"), "ternary_a8": ("ternary_a8", "a8"),
    }
    assert [kernel_for("int4", M) for M in (1, 2, 64, 65)] == ["int4_gemv", "int4_splitk", "int4_splitk", "int4_gemm"]
    assert {kernel_for("ternary_a8", M) for M in (1, 64, 1000)} == {"ternary_a8"}
    assert (Int4Format.triton_module, TernaryA8Format.triton_module) == ("triton_int4", "triton_ternary")
    assert (Int4Format.bits, Int4Format.per_word, TernaryFormat.bits, TernaryFormat.per_word) == (4, 8, 2, 16)


@pytest.mark.parametrize("kwargs, cls, label", [
    (dict(method="int4", group_size=32), Int4Format, "int4 g32 sym"),
    (dict(method="int4", group_size=-1, symmetric=False), Int4Format, "int4 per-channel asym"),
    (dict(method="ternary", per_channel=True), TernaryFormat, "ternary per-channel a16"),
    (dict(method="ternary", activations="a8"), TernaryA8Format, "ternary per-tensor a8"),
])
def test_quant_linear_takes_its_buffers_label_and_description_from_its_format(kwargs, cls, label):
    m = QuantLinear(96, 24, **kwargs) if kwargs["method"] == "int4" else QuantLinear(64, 24, **kwargs)
    assert type(m.format) is cls and m.fmt == cls.name and m.label() == label
    shapes = m.format.buffer_shapes(m.out_features, m.in_features)
    assert {k: None if v is None else tuple(v.shape) for k, v in
            (("qweight", m.qweight), ("scales", m.scales), ("zeros", m.zeros))} == shapes
    again = QuantLinear(**m.describe())
    assert again.format == m.format and again.describe() == m.describe()
    assert m.format == linear_format(**{"K": m.in_features, **kwargs})


def test_switching_a_ternary_module_to_int8_activations_switches_its_format():
    m = QuantLinear(64, 8, method="ternary")
    m.activations = "a8"
    assert type(m.format) is TernaryA8Format and m.fmt == "ternary_a8" and m.describe()["activations"] == "a8"
    m.activations = "a16"
    assert type(m.format) is TernaryFormat
    with pytest.raises(Exception, match=r"^activations must be 'a16' or 'a8' \(ternary only\), got 'a8' for a int4 "):
        QuantLinear(64, 8, method="int4", group_size=32).activations = "a8"


@pytest.mark.parametrize("kind, cls, G, label", [("int8", Int8RowsFormat, 64, "int8 per-row"),
                                                ("int4", Int4RowsFormat, 16, "int4 g16")])
def test_row_formats_round_trip_and_match_the_embedding(kind, cls, G, label):
    w = torch.randn(40, 64, generator=torch.Generator().manual_seed(2))
    fmt = embedding_format(kind, 16, 64)
    assert type(fmt) is cls and fmt.group_size == G and fmt.label() == label
    codes, scales = quantize_rows(w, fmt.bits, fmt.group_size)
    assert int(codes.min()) >= fmt.qmin and int(codes.max()) <= fmt.qmax
    qdata = fmt.pack(codes)
    assert qdata.dtype == fmt.qdata_dtype and tuple(qdata.shape) == fmt.buffer_shapes(40, 64)["qdata"]
    assert torch.equal(fmt.unpack(qdata), codes)
    want = (codes.float().reshape(40, -1, G) * scales.float()[..., None]).reshape(40, 64)
    assert torch.equal(fmt.dequantize(qdata, scales), want)
    m = QuantEmbedding.from_weight(w, fmt.bits, 16)
    assert m.format == fmt and torch.equal(m.qdata, qdata) and torch.equal(m.dequantize_weight(), want)
    if kind == "int4":
        assert torch.equal(qdata, formats.pack_int4_rows(codes))


def test_row_format_group_problems():
    assert Int4RowsFormat.group_problem(64, 24) == "group size 24 does not divide the embedding width 64 into even groups"
    assert Int4RowsFormat.group_problem(64, 1) is not None and Int8RowsFormat.group_problem(64, 64) is None
    with pytest.raises(ValueError, match=r"^unknown embedding format 'int2'; use 'int8' or 'int4'\.$"):
        embedding_format("int2", 32, 64)


def test_manifest_descriptions_keep_their_form():
    # what checkpoints record per module (compress.json): unchanged by the format classes
    assert QuantLinear(96, 24, method="int4", group_size=-1, symmetric=False, bias=True).describe() == {
        "in_features": 96, "out_features": 24, "method": "int4", "group_size": 96, "symmetric": False,
        "per_channel": False, "activations": "a16", "bias": True, "scale_dtype": "float16"}
    assert list(QuantLinear(64, 8, method="ternary", per_channel=True, activations="a8").describe().items()) == [
        ("in_features", 64), ("out_features", 8), ("method", "ternary"), ("group_size", None), ("symmetric", True),
        ("per_channel", True), ("activations", "a8"), ("bias", False), ("scale_dtype", "float16")]
