import json

import pytest
import torch

from compress.data import TextConfig, TextSplits, load_text
from compress.errors import ConfigError
from compress.eval import EvalConfig, evaluate
from compress.recovery import OfflineTeacher, RecoverConfig, RecoverError, precompute_teacher, recover
from tests.recovery.helpers import damaged_copy, sharp_teacher, token_data
from tests.tiny import tiny_config, tiny_model


def _config(**kw):
    base = dict(steps=30, batch_size=4, lr=3e-4, eval_every=10, progress=False)
    return RecoverConfig(**{**base, **kw})


def test_distillation_brings_a_damaged_copy_back_toward_its_teacher(tmp_path, fitted_teacher, sonnet_splits):
    teacher = fitted_teacher
    student = damaged_copy(teacher)
    report = recover(student, teacher, sonnet_splits, _config(steps=40, output_dir=str(tmp_path), plot=True))
    before, after = report.eval_before, report.eval_after
    assert after["kl"] < 0.3 * before["kl"]
    assert after["loss"] < before["loss"] - 0.05  # held-out perplexity recovers too
    assert after["top1"] > before["top1"] + 0.05
    assert [e["step"] for e in report.evals] == [0, 10, 20, 30, 40]
    assert report.evals[-1] == after and after["final"]
    assert report.steps == 40 and report.tokens == 40 * 4 * 32
    log = json.loads((tmp_path / "log.json").read_text())
    assert len(log["train"]) == 40 and log["train"][0]["lr"] > 0 and "kd" in log["train"][0] and "ce" not in log["train"][0]
    assert log["summary"]["eval_after"]["kl"] == pytest.approx(after["kl"])
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "KL to teacher" in str(report)


def test_without_a_teacher_it_trains_on_next_token_loss(tokenizer, text_file):
    splits = load_text(text_file, tokenizer, TextConfig(seq_len=32))
    model = tiny_model("llama")
    report = recover(model, None, splits, _config(steps=25, lr=3e-3, eval_every=0))
    assert report.objective == "next-token cross-entropy"
    assert report.eval_after["loss"] < report.eval_before["loss"] - 1.0  # the text repeats: it is learnt fast
    assert report.eval_after["kl"] is None


def test_kd_mixed_with_ce_logs_both_terms():
    teacher = sharp_teacher()
    ids = token_data(20, 16)
    report = recover(damaged_copy(teacher), teacher, ids, _config(steps=2, alpha=0.5, eval_every=0))
    first = report.train[0]
    assert first["loss"] == pytest.approx(0.5 * first["kd"] + 0.5 * first["ce"], rel=1e-6)
    assert "x 0.5 + cross-entropy x 0.5" in report.objective


def test_the_hidden_state_term_adds_to_the_loss_and_pulls_layer_outputs_toward_the_teacher():
    from compress.recovery.losses import hidden_loss

    teacher = sharp_teacher()
    ids = token_data(32, 16)

    def layer_gap(model):
        with torch.no_grad():
            return hidden_loss(model(input_ids=ids, output_hidden_states=True).hidden_states[1:],
                               teacher(input_ids=ids, output_hidden_states=True).hidden_states[1:]).item()

    plain, matched = damaged_copy(teacher), damaged_copy(teacher)
    start = layer_gap(plain)
    recover(plain, teacher, ids, _config(steps=20, lr=1e-3, eval_every=0))
    report = recover(matched, teacher, ids, _config(steps=20, lr=1e-3, eval_every=0, hidden_weight=1.0))
    first = report.train[0]
    assert first["loss"] > first["kd"] + 0.5 * start  # the term is in the loss: kd + 1.0 x the layer gap
    assert "hidden states x 1" in report.objective
    gap = layer_gap(matched)
    assert gap < 0.75 * start and gap < 0.6 * layer_gap(plain)  # logits alone leave the layers where they are


def test_the_hidden_state_term_refuses_students_of_another_depth_and_offline_teachers(tmp_path):
    teacher = sharp_teacher()
    cfg = tiny_config("llama")
    cfg.num_hidden_layers += 1
    from transformers import AutoModelForCausalLM

    deeper = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(RecoverError, match="the student has 3 layers of width .* and the teacher 2"):
        recover(deeper, teacher, token_data(8, 8), _config(hidden_weight=0.5, steps=1, eval_every=0))
    with pytest.raises(ConfigError, match="hidden_weight needs the teacher's hidden states on the fly"):
        _config(hidden_weight=0.5, teacher_topk=8)
    with pytest.raises(ConfigError, match="hidden_weight must be a non-negative number"):
        _config(hidden_weight=-1.0)
    path = tmp_path / "topk"
    precompute_teacher(teacher, token_data(8, 8), path, k=4, progress=False)
    with pytest.raises(RecoverError, match="needs a teacher model"):
        recover(damaged_copy(teacher), OfflineTeacher(path), token_data(8, 8), _config(hidden_weight=0.5))


def test_offline_top_k_teacher_trains_like_the_online_one(tmp_path, fitted_teacher, sonnet_splits):
    teacher = fitted_teacher
    train, held = sonnet_splits.train, sonnet_splits.eval
    path = tmp_path / "topk"
    precompute_teacher(teacher, train, path, k=16, progress=False)
    offline_student, online_student = damaged_copy(teacher), damaged_copy(teacher)
    offline = recover(offline_student, str(path), train, _config(eval_every=0), eval_data=held)
    online = recover(online_student, teacher, train, _config(eval_every=0), eval_data=held)
    assert offline.objective.endswith("(offline top-16)")
    assert offline.eval_after["loss"] < offline.eval_before["loss"] - 0.05
    assert offline.eval_after["loss"] == pytest.approx(online.eval_after["loss"], rel=0.03)
    kl = lambda m: evaluate(m, held, teacher, EvalConfig(progress=False)).kl_to_reference  # noqa: E731
    assert kl(offline_student) < 0.3 * kl(damaged_copy(teacher))
    # teacher_topk in the config precomputes into output_dir and keeps the model for held-out KL
    run = recover(damaged_copy(teacher), teacher, train, _config(steps=3, teacher_topk=8, eval_every=0, output_dir=str(tmp_path / "run")), eval_data=held)
    assert OfflineTeacher(tmp_path / "run" / "teacher-topk").k == 8 and run.eval_after["kl"] is not None
    assert run.objective.endswith("(offline top-8)")


def test_early_stopping_keeps_the_best_weights():
    teacher = sharp_teacher()
    ids = token_data(40, 16)
    # a learning rate far too high: the held-out loss gets worse from the start
    report = recover(damaged_copy(teacher), teacher, ids[:32], _config(steps=50, lr=0.05, eval_every=2, patience=2),
                     eval_data=ids[32:])
    assert report.stopped_early and report.steps == 4
    assert report.best_eval["step"] == 0
    assert report.eval_after["loss"] == pytest.approx(report.eval_before["loss"], abs=1e-6)


def test_token_budget_and_gradient_accumulation():
    teacher = sharp_teacher()
    ids = token_data(20, 16)
    report = recover(damaged_copy(teacher), teacher, ids, _config(steps=None, tokens=1000, batch_size=2, grad_accum=3, eval_every=0))
    assert report.total_steps == 11 and report.tokens == 11 * 6 * 16  # ceil(1000 / (6 sequences x 16 tokens))


def test_grad_accumulation_equals_a_bigger_batch():
    teacher = sharp_teacher()
    ids = token_data(24, 16)
    a, b = damaged_copy(teacher), damaged_copy(teacher)
    # fp32: equal to 1e-6 only in fp32 arithmetic (bf16 autocast rounds a batch of 8 differently from two of 4)
    recover(a, teacher, ids, _config(steps=3, batch_size=4, grad_accum=2, eval_every=0, precision="fp32"))
    recover(b, teacher, ids, _config(steps=3, batch_size=8, grad_accum=1, eval_every=0, precision="fp32"))
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert all(torch.allclose(pa[n], pb[n], atol=1e-6) for n in pa)


def test_the_callers_random_state_is_left_alone():
    teacher = sharp_teacher()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    recover(damaged_copy(teacher), teacher, token_data(8, 16), _config(steps=2, eval_every=0, lora_rank=2, lora_dropout=0.1))
    assert torch.equal(torch.get_rng_state(), state)


# -- bad input ---------------------------------------------------------------

def test_empty_training_data_is_refused():
    with pytest.raises(RecoverError, match=r"The training data is empty \(shape \(0, 16\)\); give more text"):
        recover(tiny_model("llama"), None, torch.empty(0, 16, dtype=torch.long), _config())
    ids = token_data(4, 16)
    splits = TextSplits(calibration=ids, train=torch.empty(0, 16, dtype=torch.long), eval=ids, config=TextConfig(seq_len=16))
    with pytest.raises(RecoverError, match=r"The training data is empty \(shape \(0, 16\)\)"):
        recover(tiny_model("llama"), None, splits, _config())
    with pytest.raises(RecoverError, match="recover\\(\\) needs training data"):
        recover(tiny_model("llama"), None, None, _config())
    with pytest.raises(RecoverError, match="must hold integer token ids, got dtype torch.float32"):
        recover(tiny_model("llama"), None, torch.zeros(4, 8), _config())


def test_token_ids_outside_the_vocabulary_are_refused():
    ids = token_data(4, 8)
    ids[2, 3] = 5000
    with pytest.raises(RecoverError, match="token id 5000, outside the student's vocabulary of 320; tokenise"):
        recover(tiny_model("llama"), None, ids, _config())


def test_teacher_with_another_vocabulary_is_refused():
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.vocab_size = 400
    other = AutoModelForCausalLM.from_config(config)
    with pytest.raises(RecoverError, match="teacher has 400 vocabulary entries and the student 320; .* share a tokenizer"):
        recover(tiny_model("llama"), other, token_data(8, 8), _config())


def test_encoders_are_refused():
    with pytest.raises(RecoverError, match="trains causal language models"):
        recover(tiny_model("bert-mlm"), None, token_data(8, 8), _config())
    with pytest.raises(RecoverError, match="The teacher is not a causal language model"):
        recover(tiny_model("llama"), tiny_model("bert-mlm"), token_data(8, 8), _config())


def test_other_bad_combinations():
    with pytest.raises(RecoverError, match="teacher_topk > 0 .* no teacher was given"):
        recover(tiny_model("llama"), None, token_data(8, 8), _config(teacher_topk=8))
    with pytest.raises(RecoverError, match="patience > 0\\) needs held-out data"):
        recover(tiny_model("llama"), None, token_data(8, 8), _config(patience=2))
    model = tiny_model("llama")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(RecoverError, match="no trainable parameters"):
        recover(model, None, token_data(8, 8), _config())


def test_keyword_overrides_and_their_mistakes():
    teacher = sharp_teacher()
    report = recover(damaged_copy(teacher), teacher, token_data(8, 8), steps=2, eval_every=0, progress=False)
    assert report.total_steps == 2
    with pytest.raises(ConfigError, match=r"unknown RecoverConfig fields \['step'\]"):
        recover(damaged_copy(teacher), teacher, token_data(8, 8), step=2)
    with pytest.raises(RecoverError, match=r"The teacher is a \(model, tokenizer\) pair; pass the model alone"):
        recover(damaged_copy(teacher), (teacher, None), token_data(8, 8), _config())
