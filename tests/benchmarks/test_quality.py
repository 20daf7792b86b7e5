"""The quality benchmark end to end at CI size on the real SmolLM2-135M (slow): every row built and measured."""
import json
import math

import pytest

from tests.bench_script import load_benchmark

pytestmark = pytest.mark.slow

OURS = ("Adapt-Pruner (ours)", "int4 GPTQ g128 (ours)", "int4 GPTQ g128 float zero points (ours)",
        "ternary QAT + distillation (ours)")


def _load():
    return load_benchmark("quality")


def test_quick_run_measures_every_row_against_fp32_on_both_domains(tmp_path):
    assert _load().main(["--quick", "--quiet", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quality-quick.json").read_text())
    assert (tmp_path / "quality-quick.png").stat().st_size > 0
    rows = {r["row"]: r for r in result["rows"]}
    for name in (*OURS, "fp32", "uniform magnitude", "uniform Taylor", "int4 RTN g128", "ternary absmean"):
        assert name in rows and "error" not in rows[name], (name, rows.get(name))
    assert result["data"]["source"] == "default" and result["data"]["calibration_sequences"] > 0
    assert list(result["domains"]) == ["shakespeare", "news"]
    fp32 = rows["fp32"]
    for domain in result["domains"]:
        d = fp32["domains"][domain]
        assert d["kl_to_fp32"] == pytest.approx(0, abs=1e-5) and d["top1_agreement"] == 1.0 and d["ratio"] == 1.0
    for r in rows.values():
        if "error" in r:
            continue
        for domain in result["domains"]:
            d = r["domains"][domain]
            assert math.isfinite(d["perplexity"]) and d["perplexity"] > 1, (r["row"], domain)
            assert d["ratio"] == pytest.approx(d["perplexity"] / fp32["domains"][domain]["perplexity"])
            assert len(d["per_sequence_nll"]) == result["held_out"][domain]["sequences"]
        if r["group"] == "pruned":  # at least 30% of the non-embedding parameters gone; uniform overshoots by whole kv groups
            assert 0.64 <= r["params_non_embedding"] / fp32["params_non_embedding"] <= 0.70 + 1e-3, r["row"]
            assert r["details"]["recover_steps"] == 2
        if r["group"] == "4-bit":
            assert r["params_non_embedding"] == fp32["params_non_embedding"], r["row"]
            assert r["bits_per_weight"] <= 4.6 and r["mib_stored"] < fp32["mib_stored"] / 2.5
        if r["group"] == "ternary":
            assert r["bits_per_weight"] <= 2.1
            assert r["domains"]["news"]["kl_to_fp32"] > 0
