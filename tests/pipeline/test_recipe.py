"""Recipes: YAML and Python forms, built-in recipes, and one clear error per kind of mistake."""
import dataclasses

import pytest

from compress.pipeline import Export, Prune, Quantize, Recipe, RecipeError, Recover, builtin_recipes, load_recipe
from compress.pruning import PruneConfig
from compress.quantization import QuantConfig
from compress.recovery import RecoverConfig

YAML = """
name: mine
model: smollm2-135m
text: {seq_len: 128}
eval: {sequences: 4}
stages:
  - prune: {sparsity: 0.25, round_to: 32}
  - recover: {steps: 10, lr: 1e-4, lora_targets: [q_proj]}
  - quantize: {method: int4, group_size: 32, gptq: true, calibration_sequences: 8}
  - export: [native, hf]
"""


def test_yaml_file_becomes_the_same_dataclasses_python_builds(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(YAML)
    recipe = load_recipe(path)
    assert recipe.stages == (
        Prune(PruneConfig(sparsity=0.25, round_to=32)),
        Recover(RecoverConfig(steps=10, lr=1e-4, lora_targets=("q_proj",))),  # YAML's 1e-4 is a string: coerced
        Quantize(QuantConfig(method="int4", group_size=32, gptq=True, calibration_sequences=8)),
        Export(("native", "hf")),
    )
    assert recipe.text.seq_len == 128 and recipe.eval.sequences == 4 and recipe.name == "mine"
    assert Recipe.from_dict(recipe.to_dict()) == recipe  # to_dict spells out every option and reads back


def test_bare_configs_and_shorthands_are_stages():
    recipe = Recipe(stages=[PruneConfig(sparsity=0.2), RecoverConfig(steps=5), "ternary", "export"])
    assert [s.kind for s in recipe.stages] == ["prune", "recover", "quantize", "export"]
    assert recipe.stages[2].config.method == "ternary" and recipe.stages[3].formats == ("native",)
    short = Recipe.from_dict({"stages": [{"prune": 0.4}, {"quantize": "int4-gptq"}, {"export": "hf"}]})
    assert short.stages[0].config.sparsity == 0.4 and short.stages[1].config.gptq and short.stages[2].formats == ("hf",)


@pytest.mark.parametrize("name", ["default", "small-fast", "smallest"])
def test_builtin_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.stages and builtin_recipes()[name]


def test_smallest_trains_ternary_in_the_loop():
    kinds = [s.kind for s in load_recipe("smallest").stages]
    q = kinds.index("quantize")
    assert kinds[q + 1] == "recover" and load_recipe("smallest").stages[q].config.method == "ternary"


@pytest.mark.parametrize("recipe, message", [
    ({"stages": [{"prune": {"sparsty": 0.3}}]},
     r"Unknown key\(s\) 'sparsty' in stage 1 \(prune\); allowed keys are: amplitude, batch_size, .*sparsity"),
    ({"stages": [{"quantize": {"group": 64}}]},
     r"Unknown key\(s\) 'group' in stage 1 \(quantize\); allowed keys are: .*calibration_sequences.*group_size"),
    ({"stages": [{"distill": {}}]}, r"stage 1 is of unknown kind 'distill'; stages are prune, recover, quantize, export"),
    ({"stages": [{"prune": {}, "quantize": "int4"}]}, r"stage 1 has keys \['prune', 'quantize'\]; each stage is a mapping with exactly one key"),
    ({"stages": ["int5"]}, r"stage 1 is 'int5', which is neither a stage"),
    ({"stages": [{"prune": {"sparsity": 1.5}}]}, r"In stage 1 \(prune\): sparsity must be a fraction between 0 and 1"),
    ({"stages": [{"quantize": "int2"}]}, r"In stage 1 \(quantize\): unknown quantisation method 'int2'"),
    ({"stages": [{"recover": {"output_dir": "x"}}]}, r"A recover stage must not set output_dir or resume"),
    ({"stages": [{"export": ["hf", "hf"]}]}, r"export formats lists a format twice"),
    ({"stages": [{"export": {"format": "hf"}}]}, r"Unknown key\(s\) 'format' in stage 1 \(export\); allowed keys are: dtype, formats, gguf_type, verify"),
    ({"stages": [{"export": {"formats": ["hf"], "gguf_type": "q4_0"}}]}, r"gguf_type applies to the gguf format"),
    ({"stages": [{"export": {"formats": ["hf"], "verify": "yes"}}]}, r"export verify must be true or false, got 'yes'"),
    ({"stages": [{"quantize": {"calibration_sequences": 0}}]},
     r"In stage 1 \(quantize\): calibration_sequences must be at least 1 \(or None to use them all\), got 0"),
    ({"stages": []}, r"The recipe has no stages"),
    ({"model": "x"}, r"the recipe has no stages; add a list"),
    ({"stages": ["int4"], "modle": "x"}, r"Unknown key\(s\) 'modle' in the recipe; allowed keys are: name, description, model"),
    ({"stages": ["int4"], "text": {"seq_len": 1}}, r"In the recipe: seq_len must be at least 2 tokens"),
    ({"stages": ["int4"], "text": {"seqlen": 64}}, r"Unknown key\(s\) 'seqlen' in the text section of the recipe; allowed keys are: bos, calibration_fraction"),
    ({"stages": ["int4"], "eval": {"sequences": 0}}, r"eval sequences must be an integer >= 1, got 0"),
    ({"stages": ["int4"], "dtype": "int8"}, r"dtype must be one of float32, bfloat16, float16, got 'int8'"),
    ({"stages": ["int4"], "data": {"generated": 0.6, "notes/": 0.6}}, r"In the recipe's data: The shares of the data mix sum to 1.2, not 1"),
    ({"stages": ["int4"], "data": ["generated=0.5", "notes/"]}, r"shares for some texts but not for notes/"),
    ({"stages": ["int4"], "generate": {"tokens": 0}}, r"In the recipe: generate tokens must be an integer >= 1, got 0"),
    ({"stages": ["int4"], "generate": {"token": 5}}, r"Unknown key\(s\) 'token' in the generate section of the recipe"),
    ({"stages": ["int4"], "eval": {"data": 5}}, r"eval data must be a list of text files"),
])
def test_bad_recipes_say_what_and_where(recipe, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_unknown_builtin_and_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match=r"'fastest' is not a built-in recipe; give a YAML file or one of the built-in "
                                          r"recipes: default, small-fast, smallest"):
        load_recipe("fastest")
    with pytest.raises(RecipeError, match=r"Recipe file '.*nothere.yaml' does not exist"):
        load_recipe(tmp_path / "nothere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - prune: {sparsity: 0.3\n")
    with pytest.raises(RecipeError, match=r"recipe file '.*bad.yaml' is not valid YAML at line \d"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match=r"not a int"):
        load_recipe(7)


def test_recipe_files_take_their_name_from_the_file(tmp_path):
    path = tmp_path / "quick.yaml"
    path.write_text("stages: [int4]\n")
    assert load_recipe(path).name == "quick"
    assert dataclasses.replace(load_recipe(path), name="x").name == "x"


def test_a_sensitivity_override_map_is_merged_into_the_stages(tmp_path):
    (tmp_path / "sens.yaml").write_text(
        "quantize:\n  overrides: {model.layers.0.mlp.down_proj: {group_size: 32}}\n  modules_to_not_convert: [lm_head]\n"
        "prune:\n  protect_layers: [0, 1]\n")
    path = tmp_path / "r.yaml"
    path.write_text("override_map: sens.yaml\nstages: [{prune: 0.2}, int4, {recover: {steps: 2}}]\n")
    prune, quant, recover = load_recipe(path).stages
    assert prune.config.protect_layers == (0, 1) and prune.config.sparsity == 0.2
    assert quant.config.for_module("model.layers.0.mlp.down_proj").group_size == 32
    assert recover.config == RecoverConfig(steps=2)
    with pytest.raises(RecipeError, match=r"Override map '.*missing.yaml' does not exist"):
        load_recipe({"override_map": str(tmp_path / "missing.yaml"), "stages": ["int4"]})


def test_recipes_are_bounded_in_depth_and_size_and_quote_values_short(tmp_path):
    deep = {"stages": ["int4"], "description": 0}
    node = deep
    for _ in range(40):
        node["description"] = {"description": 0}
        node = node["description"]
    with pytest.raises(RecipeError, match=r"nested more than 16 levels deep"):
        load_recipe(deep)
    shared = ["x"] * 10
    for _ in range(6):  # what YAML aliases build: one list referenced over and over
        shared = [shared] * 10
    with pytest.raises(RecipeError, match=r"holds more than 20000 values"):
        load_recipe({"stages": ["int4"], "description": shared})
    big = tmp_path / "big.yaml"
    big.write_text("stages: [int4]\n" + "#" * 1_100_000 + "\n")
    with pytest.raises(RecipeError, match=r"more than the 1,000,000 a recipe may have"):
        load_recipe(big)
    for recipe in ({"stages": [{"quantize": {"method": "q" * 100_000}}]}, {"stages": ["int4"], "model": ["m" * 100_000]},
                   {"stages": [{"export": {"formats": ["hf"], "verify": "v" * 100_000}}]},
                   {"stages": [{"prune": {"s" * 100_000: 1}}]}, {"stages": ["int4"], "k" * 100_000: 1}):
        with pytest.raises(RecipeError) as info:
            load_recipe(recipe)
        assert len(str(info.value)) < 1000


def test_data_generated_mixes_with_shares_and_eval_data_read_back():
    r = load_recipe({"stages": ["int4"], "data": {"generated": 0.7, "notes/": 0.3}, "generate": {"tokens": 512},
                     "eval": {"data": ["mine.txt"]}})
    assert r.data == ("generated=0.7", "notes/=0.3") and r.generate.tokens == 512 and r.eval.data == ("mine.txt",)
    assert Recipe.from_dict(r.to_dict()) == r
    assert load_recipe({"stages": ["int4"], "data": "generated"}).data == ("generated",)
