"""QuantConfig: shorthands, validation messages, overrides, round trip through a dict."""
import dataclasses
import re

import pytest

from compress.errors import ConfigError
from compress.quantization import SHORTHANDS, QuantConfig, resolve_config
from compress.quantization.config import FIELD_ORDER


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
    with pytest.raises(ConfigError, match=r"unknown quantisation method 'int2'; use one of int4, .*int4-gptq, .*int3, .*ternary"):
        resolve_config("int2")
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
        ({"overrides": {"down_proj": {"nbits": 3}}}, r"unknown or non-quantiser fields \[.nbits.\]"),
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
        QuantConfig.from_dict({"nbits": 4})


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


# -- the two config classes -------------------------------------------------------

def test_quant_config_returns_the_class_of_its_method():
    from compress import Int4Config as TopInt4, TernaryConfig as TopTernary
    from compress.quantization import Int4Config, TernaryConfig

    assert (TopInt4, TopTernary) == (Int4Config, TernaryConfig)
    assert type(QuantConfig()) is Int4Config and type(QuantConfig(method="int4", group_size=64)) is Int4Config
    assert type(QuantConfig(method="ternary", scale="absmedian")) is TernaryConfig
    assert type(QuantConfig("ternary")) is TernaryConfig and type(TernaryConfig()) is TernaryConfig
    assert {k: type(resolve_config(k)).__name__ for k in ("int4-gptq", "ternary-a8")} == {
        "int4-gptq": "Int4Config", "ternary-a8": "TernaryConfig"}
    assert isinstance(TernaryConfig(), QuantConfig) and QuantConfig(method="ternary") == TernaryConfig()
    own = {f.name for f in dataclasses.fields(TernaryConfig)}
    assert {"scale", "per_channel", "activations"} <= own and not own & {"group_size", "gptq", "damp", "calibration_sequences"}
    own = {f.name for f in dataclasses.fields(Int4Config)}
    assert {"group_size", "gptq", "gptaq", "calibration_sequences"} <= own and not own & {"scale", "per_channel", "activations"}
    # code that handles either method reads the other method's fields at their defaults
    assert (TernaryConfig().gptq, TernaryConfig().group_size, Int4Config().activations) == (False, 128, "a16")


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "ternary", "group_size": 64}, "group_size=64 applies to int4 only; drop it or use method='int4'."),
    ({"method": "ternary", "gptaq": False, "damp": 0.1},
     "damp=0.1, gptaq=False apply to int4 only; drop them or use method='int4'."),  # in the fields' order
    ({"per_channel": True}, "per_channel=True applies to ternary only; drop it or use method='ternary'."),
    ({"scale": "absmedian"}, "scale='absmedian' applies to ternary only; drop it or use method='ternary'."),
])
def test_a_field_of_the_other_method_is_one_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        QuantConfig(**kwargs)


def test_the_other_methods_fields_at_their_defaults_are_accepted():
    # as the CLI passes every flag: the defaults of the other method's fields mean nothing and are dropped
    cfg = QuantConfig(method="ternary", group_size=128, gptq=False, symmetric=True, calibration_sequences=128)
    assert cfg == QuantConfig(method="ternary")


def test_replace_switches_the_method_and_drops_the_other_fields():
    from compress.quantization import Int4Config, TernaryConfig

    int4 = QuantConfig(group_size=64, gptq=True, symmetric=False, embeddings="int8")
    ternary = dataclasses.replace(int4, method="ternary", per_channel=True)
    assert type(ternary) is TernaryConfig and ternary.per_channel and ternary.embeddings == "int8"
    assert not ternary.gptq and ternary.group_size == 128
    back = dataclasses.replace(ternary, method="int4", group_size=32)
    assert type(back) is Int4Config and back.group_size == 32 and not back.gptq and back.activations == "a16"
    with pytest.raises(ConfigError, match=r"^group_size=32 applies to int4 only"):
        dataclasses.replace(ternary, group_size=32)


def test_the_flat_dict_keeps_every_field_and_old_dicts_load():
    cfg = QuantConfig(method="ternary", per_channel=True)
    d = cfg.to_dict()
    assert list(d) == [n for n in FIELD_ORDER if n != "overrides"] + ["overrides"]  # as before the split
    assert d["group_size"] == 128 and d["gptq"] is False
    old = {**d, "group_size": 64, "gptaq": False}  # an older manifest's ternary entry with ignored int4 values
    assert QuantConfig.from_dict(old) == cfg
