import copy
import json
import math

import pytest
import torch

from compress.data import TextConfig, load_text
from compress.eval import EvalConfig, EvalError, evaluate
from compress.errors import ConfigError
from compress.sizes import bytes_on_disk, count_parameters
from tests.tiny import VOCAB, tiny_model

QUIET = EvalConfig(batch_size=2, max_sequences=6, progress=False)


def _ids(n=6, length=24, seed=0):
    return torch.randint(4, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _perturbed(model, scale=0.5, seed=1):
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return other


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3", "bert-mlm"])
def test_model_against_itself_has_zero_kl_and_full_agreement(family):
    model = tiny_model(family)
    cfg = EvalConfig(batch_size=2, max_sequences=6, progress=False, mask_token_id=3)
    r = evaluate(model, _ids(), reference=model, config=cfg)
    assert r.kl_to_reference == pytest.approx(0.0, abs=1e-6)
    assert r.top1_agreement == 1.0
    assert r.model.perplexity == pytest.approx(r.reference.perplexity)


def test_perturbed_model_differs_from_reference():
    model = tiny_model("llama")
    r = evaluate(_perturbed(model), _ids(), reference=model, config=QUIET)
    assert r.kl_to_reference > 1e-3
    assert r.top1_agreement < 1.0


def test_perplexity_matches_transformers_own_loss():
    model = tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        hf_loss = model(input_ids=ids, labels=ids).loss.item()
    r = evaluate(model, ids, config=EvalConfig(batch_size=6, progress=False))
    assert r.model.loss == pytest.approx(hf_loss, rel=1e-5)
    assert r.model.perplexity == pytest.approx(math.exp(hf_loss), rel=1e-5)
    assert r.tokens == ids.numel() and r.sequences == 6 and r.seq_len == 24
    assert r.model.tokens_per_second > 0


def test_batch_size_does_not_change_results():
    model = tiny_model("llama")
    ref = _perturbed(model)
    a = evaluate(model, _ids(), ref, EvalConfig(batch_size=1, progress=False))
    b = evaluate(model, _ids(), ref, EvalConfig(batch_size=4, progress=False))
    assert a.model.loss == pytest.approx(b.model.loss, rel=1e-5)
    assert a.kl_to_reference == pytest.approx(b.kl_to_reference, rel=1e-4)


def test_text_splits_use_the_eval_part(text_file, tokenizer):
    model = tiny_model("llama")
    splits = load_text(text_file, tokenizer, TextConfig(seq_len=16))
    r = evaluate(model, splits, config=EvalConfig(max_sequences=None, progress=False))
    assert r.sequences == len(splits.eval)


def test_encoder_without_head_reports_embedding_cosine():
    model = tiny_model("bert")
    same = evaluate(model, _ids(), model, QUIET)
    assert same.objective == "embedding" and same.embedding_cosine == pytest.approx(1.0, abs=1e-5)
    assert same.model.perplexity is None and same.kl_to_reference is None
    other = evaluate(_perturbed(model, 1.0), _ids(), model, QUIET)
    assert other.embedding_cosine < 0.9999


def test_masked_lm_needs_a_mask_id():
    with pytest.raises(EvalError, match="no mask_token_id"):
        evaluate(tiny_model("bert-mlm"), _ids(), config=QUIET)


def test_parameter_counts_and_bytes_for_a_tied_model():
    model = tiny_model("llama")
    total, non_emb = count_parameters(model)
    unique = sum(p.numel() for p in model.parameters())
    assert total == unique
    assert non_emb == total - VOCAB * 64  # one tied embedding matrix
    assert bytes_on_disk(model) == sum(t.nbytes for k, t in model.state_dict().items() if k != "lm_head.weight")


def test_parameter_counts_for_an_untied_model():
    model = tiny_model("mistral")
    total, non_emb = count_parameters(model)
    assert non_emb == total - 2 * VOCAB * 64


def test_report_table_and_json(tmp_path):
    model = tiny_model("llama")
    r = evaluate(model, _ids(), model, QUIET, name="tiny", reference_name="ref")
    table = r.table()
    for text in ("tiny", "ref", "perplexity", "KL to reference", "top-1 agreement", "parameters"):
        assert text in table
    data = json.loads(r.save_json(tmp_path / "r.json").read_text())
    assert data["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert data["model"]["params_total"] == count_parameters(model)[0]


def test_empty_data_is_one_sentence():
    with pytest.raises(EvalError, match="no usable sequences"):
        evaluate(tiny_model("llama"), torch.empty(0, 16, dtype=torch.long), config=QUIET)


def test_wrong_data_type_is_one_sentence():
    with pytest.raises(EvalError, match="needs TextSplits or token ids"):
        evaluate(tiny_model("llama"), "some text", config=QUIET)


def test_vocabulary_mismatch_is_one_sentence():
    from transformers import AutoModelForCausalLM

    from tests.tiny import tiny_config

    cfg = tiny_config("llama")
    cfg.vocab_size = VOCAB + 8
    other = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(EvalError, match="must share a tokenizer"):
        evaluate(tiny_model("llama"), _ids(), other, QUIET)


def test_mixing_encoder_and_decoder_is_rejected():
    with pytest.raises(EvalError, match="not the same kind"):
        evaluate(tiny_model("llama"), _ids(), tiny_model("bert"), QUIET)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"max_sequences": 0}, {"mlm_probability": 1.0}])
def test_bad_eval_config(kwargs):
    with pytest.raises(ConfigError):
        EvalConfig(**kwargs)
