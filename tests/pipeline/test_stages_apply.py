"""Each model-changing recipe stage applies itself; the runner only builds the context."""
import dataclasses

import pytest
import torch

from compress.data import TextConfig, load_text
from compress.pipeline.stages import Prune, Quantize, RecipeError, StageContext
from compress.pruning import PruneConfig
from compress.quantization import QuantConfig
from compress.quantization.linear import QuantLinear
from tests.tiny import tiny_model, tiny_tokenizer


def _splits():
    return load_text(None, tiny_tokenizer(), TextConfig(seq_len=32, max_tokens=4000))


def test_prune_stage_prunes_and_records_the_step():
    model = tiny_model("llama")
    before = sum(p.numel() for p in model.parameters())
    as_dict, text = Prune(PruneConfig(sparsity=0.3, method="uniform", importance="magnitude", progress=False,
                                           calib_seq_len=None)).apply(
        model, StageContext(splits=_splits()))
    assert sum(p.numel() for p in model.parameters()) < before
    assert as_dict["achieved_sparsity"] > 0 and text
    assert model.config.compress_methods[-1]["step"] == "prune"


def test_quantize_stage_packs_or_prepares_qat():
    packed, qat = tiny_model("llama"), tiny_model("llama")
    stage = Quantize(QuantConfig(method="int4", group_size=32, progress=False))
    stage.apply(packed, StageContext(splits=_splits()))
    stage.apply(qat, StageContext(splits=_splits(), qat=True))
    assert any(isinstance(m, QuantLinear) for m in packed.modules())
    assert not any(isinstance(m, QuantLinear) for m in qat.modules())
    assert any(isinstance(m, torch.nn.Linear) and type(m) is not torch.nn.Linear for m in qat.modules())


def test_quantize_stage_gptq_reads_the_configs_calibration_sequences(monkeypatch):
    from compress import api

    seen = []
    monkeypatch.setattr(api, "quantize", lambda model, config, data=None: seen.append((config, data)) or
                        QuantReportStub())
    splits = _splits()
    assert len(splits.calibration) > 2
    Quantize(QuantConfig(group_size=32, gptq=True, calibration_sequences=2, progress=False)).apply(
        tiny_model("llama"), StageContext(splits=splits))
    config, data = seen[0]
    assert config.calibration_sequences == 2 and torch.equal(data, splits.calibration)  # quantize caps it, once


def test_one_default_for_gptq_calibration_size():
    from compress.pipeline import Recipe

    stage = Recipe.from_dict({"stages": [{"quantize": {"method": "int4", "gptq": True}}]}).stages[0]
    assert stage.config.calibration_sequences == QuantConfig().calibration_sequences
    assert "calibration_sequences" not in {f.name for f in dataclasses.fields(stage)}  # no second knob on the stage
    assert stage.options()["calibration_sequences"] == QuantConfig().calibration_sequences


def test_the_older_python_spelling_folds_into_the_config():
    config = QuantConfig(method="int4", gptq=True)
    assert Quantize(config, calibration_sequences=8) == Quantize(QuantConfig(method="int4", gptq=True,
                                                                             calibration_sequences=8))
    assert Quantize(config).config.calibration_sequences == QuantConfig.calibration_sequences
    with pytest.raises(RecipeError, match=r"calibration_sequences must be at least 1 \(or None to use them all\), got 0"):
        Quantize(config, calibration_sequences=0)


class QuantReportStub:
    def to_dict(self):
        return {}

    def table(self):
        return ""
