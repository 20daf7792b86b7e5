"""QuantConfig: shorthands, validation messages, overrides, round trip through a dict."""
import pytest

from compress.errors import ConfigError
from compress.quantization import SHORTHANDS, QuantConfig, resolve_config


def test_shorthands():
    assert resolve_config(None) == QuantConfig()
    assert resolve_config("int4").method == "int4" and resolve_config("int4").group_size == 128
    assert resolve_config("int4-gptq").gptq
    t = resolve_config("Ternary")
    assert (t.method, t.scale, t.per_channel, t.activations) == ("ternary", "absmean", False, "a16")
    assert resolve_config("ternary-absmedian").scale == "absmedian"
    assert resolve_config("int4", group_size=64).group_size == 64
    assert set(SHORTHANDS) >= {"ternary", "int4", "int4-gptq"}


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown quantisation method 'int3'; use one of int4, .*int4-gptq, .*ternary"):
        resolve_config("int3")
    with pytest.raises(ConfigError, match=r"method must be one of 'ternary', 'int4', got 'int8'"):
        QuantConfig(method="int8")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"group_size": 100}, r"group_size must be a power of two >= 16 .* got 100"),
        ({"group_size": 8}, r"group_size must be a power of two"),
        ({"scale": "absmax"}, r"scale must be one of 'absmean', 'absmedian'"),
        ({"activations": "a8"}, r"only available for ternary"),
        ({"method": "ternary", "gptq": True}, r"gptq=True applies to int4 only"),
        ({"damp": 0.0}, r"damp must be between 0 and 1"),
        ({"block_size": 0}, r"block_size must be at least 1"),
        ({"calibration_sequences": 0}, r"calibration_sequences must be at least 1 \(or None to use them all\), got 0"),
        ({"scale_dtype": "int8"}, r"scale_dtype must be one of"),
        ({"zero_point": "half"}, r"zero_point must be one of 'integer', 'float'"),
        ({"modules_to_not_convert": ["("]}, r"neither a module name nor a valid regex"),
        ({"overrides": {"down_proj": 3}}, r"override 'down_proj' must be a QuantConfig"),
        ({"overrides": {"down_proj": {"bits": 3}}}, r"unknown or non-quantiser fields \['bits'\]"),
    ],
)
def test_invalid_fields_raise_one_sentence(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        QuantConfig(**kwargs)
    assert str(info.value).endswith(".") and "\n" not in str(info.value)


def test_overrides_resolve_per_module():
    cfg = QuantConfig(
        group_size=32,
        gptq=True,
        overrides={"down_proj": {"group_size": -1}, r"model\.layers\.1\..*": "ternary", "q_proj": None},
    )
    assert cfg.for_module("model.layers.0.mlp.down_proj").group_size == -1
    assert cfg.for_module("model.layers.0.mlp.down_proj").gptq  # field changes keep the rest
    assert cfg.for_module("model.layers.1.mlp.up_proj").method == "ternary"
    assert cfg.for_module("model.layers.0.self_attn.q_proj") is None
    assert cfg.for_module("model.layers.0.mlp.up_proj") is cfg
    switched = QuantConfig(gptq=True, overrides={"o_proj": {"method": "ternary"}})
    assert not switched.for_module("a.o_proj").gptq  # switching to ternary drops gptq


def test_dict_round_trip():
    cfg = QuantConfig(method="ternary", per_channel=True, modules_to_not_convert=["lm_head", "pooler"],
                      overrides={"down_proj": "int4", "up_proj": None})
    again = QuantConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown QuantConfig fields"):
        QuantConfig.from_dict({"bits": 4})


def test_labels():
    assert QuantConfig().label() == "int4 g128 sym rtn"
    assert QuantConfig(group_size=-1, symmetric=False, gptq=True).label() == "int4 per-channel asym gptq"
    assert resolve_config("ternary-a8").label() == "ternary absmean per-tensor a8"
    assert QuantConfig(symmetric=False, zero_point="float").label() == "int4 g128 asym-float-zero rtn"


def test_int4_defaults_are_act_order_and_clip_search():
    cfg = QuantConfig()
    assert cfg.act_order and cfg.clip_search and cfg.damp == 0.01
    # the clip search changes stored values: configs that differ in it do not quantise alike
    assert cfg.quantiser_key() != QuantConfig(clip_search=False).quantiser_key()
    assert QuantConfig.from_dict(QuantConfig(act_order=False, clip_search=False).to_dict()) == QuantConfig(
        act_order=False, clip_search=False)
