"""compress.sensitivity: per-module quantisation and per-layer pruning errors, heat map, override maps."""
import copy
import json
import re

import pytest
import torch
from torch import nn

from compress.arch import adapter_for
from compress.errors import CompressError, ConfigError
from compress.pruning import PruneConfig
from compress.pruning.groups import layer_groups
from compress.pruning.surgery import prune_attention, prune_mlp
from compress.quantization import QuantConfig, QuantLinear, quantize
from compress.quantization.config import name_matches
from compress.sensitivity import (
    SensitivityReport,
    load_override_map,
    measure_sensitivity,
)
from compress.sensitivity.config import DEFAULT_FORMATS
from compress.sensitivity.probes import KLProbe, LayerProbe, ModuleProbe
from tests.threads import one_torch_thread
from tests.tiny import ALL_FAMILIES, VOCAB, tiny_model

MODULES_PER_LAYER = {"bert": 6, "bert-mlm": 6}  # one MLP input; the gated decoders have 7


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matmuls on a shared 2-core machine: one thread avoids spinning against other processes.
    with one_torch_thread():
        yield


def ids(n=6, seq=24, seed=0):
    return torch.randint(4, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def make_fragile(model, name, scale):
    """Scale the largest 1% of a weight's entries: outliers that wreck a per-tensor ternary scale."""
    with torch.no_grad():
        flat = model.get_submodule(name).weight.view(-1)
        flat[flat.abs().topk(max(1, flat.numel() // 100)).indices] *= scale


# --------------------------------------------------------------------------- what is measured

@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_layer_and_module_is_measured(family):
    model = tiny_model(family)
    importance = "magnitude" if family == "bert" else "taylor"  # a bare encoder has no loss
    report = measure_sensitivity(model, ids(), metric="layer-error", importance=importance, progress=False)
    adapter = adapter_for(model)
    per_layer = MODULES_PER_LAYER.get(family, 7)
    assert [r.layer for r in report.layers] == list(range(adapter.num_layers))
    assert len(report.modules) == adapter.num_layers * per_layer
    assert {m.name for m in report.modules} == set(adapter.projection_names())
    for m in report.modules:
        assert set(m.errors) == set(DEFAULT_FORMATS)
        assert all(e is not None and e > 0 for e in m.errors.values()), m
    for r in report.layers:
        assert r.prune_mlp > 0 and r.prune_attn > 0 and 0 < r.importance < 2
        assert r.mlp_keep == 48 and r.kv_keep == (1 if family not in ("bert", "bert-mlm") else 2)
    table = report.table(top=None)
    for m in report.modules:
        assert m.name in table


def test_the_model_is_left_unchanged(llama):
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    for metric in ("module-error", "layer-error", "kl"):
        measure_sensitivity(llama, ids(), metric=metric, progress=False)
    after = llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in llama.parameters())


@pytest.mark.parametrize("metric", ["module-error", "layer-error", "kl"])
@pytest.mark.parametrize("fmt", ["ternary-absmean", "ternary-absmedian"])
def test_a_module_with_outliers_ranks_most_sensitive_to_ternary(metric, fmt):
    fragile = "model.layers.1.self_attn.v_proj"
    model = tiny_model("llama")
    plain = measure_sensitivity(model, ids(), metric=metric, progress=False)
    assert plain.ranking(fmt)[0].name != fragile  # it is the outliers that make it fragile
    make_fragile(model, fragile, 30.0)
    ranked = measure_sensitivity(model, ids(), metric=metric, progress=False).ranking(fmt)
    assert ranked[0].name == fragile
    assert ranked[0].errors[fmt] > 1.5 * ranked[1].errors[fmt]


@pytest.mark.parametrize("fmt", ["int4-g128", "int4-g64", "int4-g32"])
def test_moderate_outliers_make_a_module_most_sensitive_to_int4(fmt):
    fragile = "model.layers.0.mlp.up_proj"
    model = tiny_model("llama")
    make_fragile(model, fragile, 5.0)
    ranked = measure_sensitivity(model, ids(), metric="module-error", progress=False).ranking(fmt)
    assert ranked[0].name == fragile and ranked[0].errors[fmt] > 1.5 * ranked[1].errors[fmt]


def test_finer_int4_groups_and_pruning_more_cost_more_or_less_as_expected(llama):
    report = measure_sensitivity(llama, ids(), metric="module-error",
                                 formats=("int4-g64", "int4-g32", "ternary-absmean"), progress=False)
    mean = {f: sum(m.errors[f] for m in report.modules) / len(report.modules) for f in report.formats}
    assert mean["int4-g32"] < mean["int4-g64"] < mean["ternary-absmean"]
    more = measure_sensitivity(llama, ids(), metric="module-error", prune_fraction=0.75, progress=False)
    assert all(b.prune_mlp > a.prune_mlp for a, b in zip(report.layers, more.layers))


# --------------------------------------------------------------------------- the probes

@pytest.mark.parametrize("n, seq", [(6, 24), (1, 16)])  # more tokens than inputs (Gram factor), and fewer (rows)
def test_module_error_is_the_relative_output_error_of_the_module(llama, n, seq):
    batches = list(ids(n, seq).split(3))
    probe = ModuleProbe(llama, adapter_for(llama), batches)
    lin = llama.model.layers[1].mlp.up_proj
    seen = []
    handle = lin.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for b in batches:
            llama(input_ids=b, use_cache=False)
    handle.remove()
    x = torch.cat(seen)
    w = lin.weight.detach()
    new = w + 0.01 * torch.randn_like(w)
    direct = (x @ (new - w).t()).norm() / (x @ w.t()).norm()
    assert probe.error(1, [(lin, new)]) == pytest.approx(float(direct), rel=1e-4)


@pytest.mark.parametrize("probe_cls", [ModuleProbe, LayerProbe, KLProbe])
def test_no_change_measures_zero_and_weights_come_back(llama, probe_cls):
    probe = probe_cls(llama, adapter_for(llama), list(ids().split(4)))
    lin = llama.model.layers[0].self_attn.o_proj
    original = lin.weight.detach().clone()
    assert probe.error(0, [(lin, original.clone())]) == pytest.approx(0.0, abs=1e-6)
    assert probe.error(0, [(lin, torch.zeros_like(original))]) > 0
    assert torch.equal(lin.weight, original)


def test_pruning_by_mask_gives_the_same_outputs_as_surgery(llama):
    """Zeroing o / down columns (what the probes measure) equals cutting the groups and channels out."""
    x = ids(2, 16)
    masked, cut = copy.deepcopy(llama), copy.deepcopy(llama)
    parts_m, parts_c = adapter_for(masked).layer(1), adapter_for(cut).layer(1)
    groups = layer_groups(parts_c)
    keep_channels, keep_groups = list(range(0, 96, 2)), [1]
    with torch.no_grad():
        parts_m.mlp_out.weight[:, [c for c in range(96) if c not in keep_channels]] = 0
        parts_m.o.weight[:, groups.q_rows([0])] = 0
    prune_mlp(parts_c, keep_channels)
    adapter = adapter_for(cut)
    prune_attention(parts_c, groups, keep_groups, adapter.attention_module(1), adapter.spec.attn_head_attrs)
    with torch.no_grad():
        a = masked(input_ids=x, use_cache=False).logits
        b = cut(input_ids=x, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- report outputs

def test_json_round_trip_and_heatmap_png(llama, tmp_path):
    report = measure_sensitivity(llama, ids(), metric="module-error", progress=False)
    text = report.to_json(tmp_path / "r.json")
    again = SensitivityReport.from_dict(json.loads((tmp_path / "r.json").read_text()))
    assert again == report and json.loads(text)["metric"] == "module-error"
    png = report.heatmap(tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_heatmap_copes_with_unmeasured_entries(llama, tmp_path):
    report = measure_sensitivity(llama, ids(), metric="module-error", formats=("int4-g32",), progress=False)
    for m in report.modules[::3]:
        m.errors["int4-g32"] = None
    for r in report.layers:
        r.prune_attn = None
    assert report.heatmap(tmp_path / "h.png").stat().st_size > 0
    assert "-" in report.table()


# --------------------------------------------------------------------------- override maps

@pytest.fixture
def report(llama):
    return measure_sensitivity(llama, ids(), metric="module-error", progress=False)


def test_override_map_keeps_the_most_sensitive_modules_in_full_precision(report, llama, tmp_path):
    path = report.write_override_map(tmp_path / "o.yaml", target="int4-g32", keep=0.2, protect=1)
    loaded = load_override_map(path)
    top = [m.name for m in report.ranking("int4-g32")[:3]]  # 20% of 14 modules, rounded up
    assert loaded["quantize"]["modules_to_not_convert"] == ("lm_head", *top)
    worst_layer = max(report.layers, key=lambda r: r.prune_error).layer
    assert loaded["prune"] == {"protect_layers": (worst_layer,)}
    assert PruneConfig(**loaded["prune"]).protect_layers == (worst_layer,)
    model = copy.deepcopy(llama)
    quantize(model, QuantConfig(method="int4", group_size=32, progress=False, **loaded["quantize"]))
    for name, module in model.named_modules():
        if name in top:
            assert type(module) is nn.Linear
        elif name in adapter_for(model).projection_names():
            assert isinstance(module, QuantLinear)


def test_override_map_promotes_to_int4_under_ternary(report, llama, tmp_path):
    path = report.write_override_map(tmp_path / "o.yaml", target="ternary-absmean", keep=0.25, promote_to="int4-g32")
    loaded = load_override_map(path)
    promoted = [m.name for m in report.ranking("ternary-absmean")[:4]]
    assert list(loaded["quantize"]["overrides"]) == promoted
    assert loaded["quantize"]["modules_to_not_convert"] == ("lm_head",)
    model = copy.deepcopy(llama)
    quantize(model, QuantConfig(method="ternary", progress=False, **loaded["quantize"]))
    labels = {name: m.label() for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert all(labels[n].startswith("int4 g32") for n in promoted)
    assert sum(lab.startswith("ternary") for lab in labels.values()) == 14 - 4
    assert len(loaded["prune"]["protect_layers"]) == 1  # 25% of 2 layers, rounded up


def test_modules_a_format_packs_only_at_another_group_size_get_it(report):
    """When the packed format refuses the named group size, the map names the size measured (one regex per path)."""
    for m in report.modules:
        if m.module.endswith("down_proj"):
            m.group_sizes["int4-g128"] = 32
    report.modules[0].group_sizes["int4-g128"] = 64  # one layer only: listed by name
    overrides = report.override_map("int4-g128", keep=0.0)["quantize"]["overrides"]
    assert overrides == {
        r"model\.layers\.\d+\.mlp\.down_proj": {"group_size": 32},
        report.modules[0].name: {"group_size": 64},
    }
    cfg = QuantConfig(method="int4", overrides=overrides)
    assert cfg.for_module("model.layers.1.mlp.down_proj").group_size == 32
    assert cfg.for_module(report.modules[0].name).group_size == 64
    assert cfg.for_module("model.layers.1.mlp.up_proj").group_size == 128


def test_override_map_written_is_valid_yaml_with_a_header(report, tmp_path):
    text = report.write_override_map(tmp_path / "o.yaml", target="int4-g64").read_text()
    assert text.startswith("# compress-lm sensitivity override map")
    assert re.search(r"^quantize:\n  overrides:", text, re.M) and "protect_layers" in text


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "data, message",
    [
        (None, "Sensitivity needs calibration text"),
        (torch.empty(0, 16, dtype=torch.long), "holds no sequences"),
        (torch.rand(2, 16), "integer token ids shaped [n, seq_len]"),
        (torch.full((2, 16), VOCAB + 5), "must lie in [0, 320)"),
    ],
)
def test_bad_data_is_refused(llama, data, message):
    with pytest.raises(CompressError, match=re.escape(message)):
        measure_sensitivity(llama, data, progress=False)


def test_sequences_shorter_than_seq_len_are_refused(llama):
    with pytest.raises(CompressError, match="shorter than seq_len=32"):
        measure_sensitivity(llama, ids(seq=16), seq_len=32, progress=False)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"formats": ("int2-g128",)}, "unknown quantisation format(s) ['int2-g128']; use some of int4-g128"),
        ({"formats": ()}, "formats must name at least one format"),
        ({"metric": "mse"}, "metric must be one of module-error, layer-error, kl"),
        ({"prune_fraction": 1.0}, "prune_fraction must be a fraction between 0 and 1"),
        ({"importance": "random"}, "importance must be one of"),
        ({"sequences": 0}, "sequences must be an integer >= 1"),
        ({"colour": "red"}, "unexpected keyword argument 'colour'"),
    ],
)
def test_bad_config_is_refused(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        measure_sensitivity(tiny_model("llama"), ids(), progress=False, **changes)


def test_unsupported_models_are_refused():
    with pytest.raises(CompressError, match="is not a transformers model"):
        measure_sensitivity(nn.Linear(4, 4), ids(), progress=False)


def test_quantised_models_are_refused(llama):
    quantize(llama, QuantConfig(method="int4", group_size=32, progress=False))
    with pytest.raises(CompressError, match="measure the model before quantising it"):
        measure_sensitivity(llama, ids(), progress=False)


def test_a_bare_encoder_has_no_kl_and_no_taylor_scores():
    bare = tiny_model("bert")
    with pytest.raises(CompressError, match="no output head, so metric='kl' cannot be measured"):
        measure_sensitivity(bare, ids(), metric="kl", importance="magnitude", progress=False)
    with pytest.raises(CompressError, match="Taylor importance cannot be computed"):
        measure_sensitivity(bare, ids(), progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "int4-g16"}, "target format 'int4-g16' was not measured"),
        ({"keep": 1.5}, "keep must be a fraction of the modules between 0 and 1"),
        ({"protect": -1}, "protect must be a whole number of layers >= 0"),
        ({"promote_to": "int8"}, "promote_to 'int8' is not a format; use 'full' or one of"),
        ({"promote_to": "int4-g128"}, "promote_to is the target format 'int4-g128' itself"),
        ({"target": "int4-g32", "promote_to": "ternary-absmean"}, "measured no more precise than the target"),
    ],
)
def test_bad_override_settings_are_refused(report, kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        report.override_map(**kwargs)


@pytest.mark.parametrize(
    "text, message",
    [
        ("quantize: [1, 2", "is not valid YAML"),
        ("- a\n- b\n", "must be a mapping with 'quantize' and/or 'prune'"),
        ("recover: {steps: 3}\n", "has unknown key(s) ['recover']"),
        ("quantize: {overrides: {q_proj: {nbits: 3}}}\n", "override 'q_proj' sets unknown or non-quantiser fields ['nbits']"),
        ("quantize: {overrides: {'(': int4}}\n", "is neither a module name nor a valid regex"),
        ("quantize: {modules_to_not_convert: lm_head}\n", "must be a list of module names or regexes"),
        ("prune: {protect_layers: [0, -1]}\n", "must be a list of distinct layer indices >= 0"),
        ("prune: {sparsity: 0.5}\n", "'prune' has unknown key(s) ['sparsity']"),
    ],
)
def test_bad_override_files_are_refused(tmp_path, text, message):
    path = tmp_path / "o.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_override_map(path)


def test_a_missing_override_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; write one with `compress-lm sensitivity"):
        load_override_map(tmp_path / "nope.yaml")


def test_a_hand_written_map_without_modules_to_not_convert_keeps_the_default(tmp_path):
    path = tmp_path / "o.yaml"
    path.write_text("quantize:\n  overrides:\n    'model\\.layers\\.0\\..*': null\n")
    loaded = load_override_map(path)
    assert loaded == {"quantize": {"overrides": {r"model\.layers\.0\..*": None}}, "prune": {}}
    cfg = QuantConfig(**loaded["quantize"])
    assert cfg.modules_to_not_convert == ("lm_head",) and cfg.for_module("model.layers.0.mlp.up_proj") is None
    assert name_matches("model.layers.0.mlp.up_proj", r"model\.layers\.0\..*")


# --------------------------------------------------------------------------- command line

def test_cli_writes_table_heatmap_json_and_override_map(tiny_dir, text_file, tmp_path, capsys):
    from compress.cli import main

    png, js, ov = tmp_path / "s.png", tmp_path / "s.json", tmp_path / "o.yaml"
    argv = ["sensitivity", str(tiny_dir), "--data", str(text_file), "--seq-len", "16", "--sequences", "2",
            "--metric", "module-error", "--formats", "int4-g32", "ternary-absmean", "--heatmap", str(png),
            "--json", str(js), "--overrides", str(ov), "--target", "ternary-absmean", "--promote-to", "int4-g32",
            "--keep", "0.2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "most sensitive modules (ranked by ternary-absmean)" in out and "prune MLP 50%" in out  # --target
    assert png.exists() and json.loads(js.read_text())["formats"] == ["int4-g32", "ternary-absmean"]
    assert len(load_override_map(ov)["quantize"]["overrides"]) == 3
    assert main(argv) == 2  # the outputs exist now
    err = capsys.readouterr().err.strip()
    assert err.endswith("already exists; pass --force to replace it, or choose another path.") and "\n" not in err
    assert main(argv + ["--force"]) == 0


def test_cli_checks_override_settings_before_measuring(tiny_dir, tmp_path, capsys):
    from compress.cli import main

    argv = ["sensitivity", str(tiny_dir), "--formats", "int4-g32", "--overrides", str(tmp_path / "o.yaml"),
            "--target", "ternary-absmean", "--heatmap", str(tmp_path / "h.png")]
    assert main(argv) == 2
    assert "target format 'ternary-absmean' was not measured" in capsys.readouterr().err
    assert not (tmp_path / "h.png").exists()


# --------------------------------------------------------------------------- the real model

@pytest.mark.slow
def test_smollm2_override_map_is_accepted_by_quantize(tmp_path):
    """On SmolLM2-135M (in_features 576 and 1536): measure, write a map, quantise with it."""
    import compress
    from tests.tiny import SAMPLE_TEXT

    model, tokenizer = compress.load_model("smollm2-135m")
    ids = tokenizer(SAMPLE_TEXT * 3, return_tensors="pt").input_ids[:, :96]
    report = measure_sensitivity(model, ids, metric="module-error", formats=("int4-g128", "ternary-absmean"),
                                 importance="magnitude", progress=False)
    assert len(report.layers) == 30 and len(report.modules) == 30 * 7
    assert all(e is not None and e > 0 for m in report.modules for e in m.errors.values())
    mean = {f: sum(m.errors[f] for m in report.modules) / len(report.modules) for f in report.formats}
    assert mean["int4-g128"] < mean["ternary-absmean"]
    loaded = load_override_map(report.write_override_map(tmp_path / "o.yaml", target="int4-g128", keep=0.05))
    kept = [m.name for m in report.ranking("int4-g128")[:11]]  # 5% of 210, rounded up
    assert loaded["quantize"]["modules_to_not_convert"] == ("lm_head", *kept)
    quantize(model, QuantConfig(method="int4", group_size=128, progress=False, **loaded["quantize"]))
    linear = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    assert set(kept) <= linear and sum(isinstance(m, QuantLinear) for m in model.modules()) == 210 - 11
