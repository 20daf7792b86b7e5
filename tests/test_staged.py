"""Adapt-Accel (compress.staged): the schedule as numbers, and a staged run on a tiny model."""
import copy

import pytest
import torch

from compress.arch import adapter_for
from compress.data import TextConfig, TextSplits
from compress.errors import CompressError
from compress.eval import EvalConfig, evaluate
from compress.api import prune
from compress.errors import ConfigError
from compress.pruning import PruneConfig, StageReport
from compress.pruning import prune as prune_only
from compress.pruning.groups import layer_groups
from compress.staged import shard_rows, stage_schedules, stage_targets, stage_token_budgets
from compress.recovery import RecoverConfig
from compress.recovery.schedule import lr_factor
from compress.sizes import count_parameters
from tests.pruning.helpers import FAST, assert_generates_with_cache, calib, gqa_model


def test_stage_targets_fall_linearly_to_the_budget():
    assert stage_targets(1000, 0.3, 3) == pytest.approx([900.0, 800.0, 700.0])
    assert stage_targets(1000, 0.3, 1) == pytest.approx([700.0])


def test_linear_split_gives_later_stages_more_tokens():
    # 2k / (T (T + 1)) of 4 * 100 tokens: 40, 80, 120, 160
    assert stage_token_budgets(4, 100, "linear") == [40, 80, 120, 160]
    assert stage_token_budgets(4, 100, "equal") == [100] * 4


def _global_lr(budgets, pieces, wsd_total_fraction):
    """The lr the stages run, token by token (one token per step), as one list."""
    out = []
    for tokens, p in zip(budgets, pieces):
        out += [p.lr_scale * lr_factor(i, tokens, "wsd", p.warmup_fraction, p.decay_fraction, p.min_lr_ratio)
                for i in range(tokens)]
    return out


def test_stage_schedules_piece_together_one_global_decay():
    budgets = [100, 200, 300, 400]  # 1000 in all: warm-up to 50, decay over the last 200 tokens
    pieces = stage_schedules(budgets, "wsd", 0.05, 0.2, 0.1)
    assert pieces[0].warmup_fraction == pytest.approx(0.5) and pieces[0].decay_fraction == 0
    assert [p.warmup_fraction for p in pieces[1:]] == [0, 0, 0]
    assert pieces[3].decay_fraction == pytest.approx(0.5) and pieces[3].lr_scale == 1.0
    assert pieces[3].min_lr_ratio == pytest.approx(0.1)
    lr = _global_lr(budgets, pieces, 0.2)
    expected = [lr_factor(i, 1000, "wsd", 0.05, 0.2, 0.1) for i in range(1000)]
    assert lr[50:] == pytest.approx(expected[50:], abs=0.006)  # exact up to the 1-step offset of the decay
    assert lr[:50] == pytest.approx(expected[:50])


def test_a_stage_inside_the_decay_starts_from_the_global_factor():
    pieces = stage_schedules([100, 100], "wsd", 0.0, 0.75, 0.0)  # decay from token 50 to 200
    assert pieces[1].lr_scale == pytest.approx(1 - 50 / 150)
    assert pieces[1].decay_fraction == 1.0 and pieces[1].min_lr_ratio == pytest.approx(0.0)
    constant = stage_schedules([100, 100], "constant", 0.1, 0.2, 0.0)
    assert [(p.lr_scale, p.decay_fraction) for p in constant] == [(1.0, 0.0), (1.0, 0.0)]
    assert constant[0].warmup_fraction == pytest.approx(0.2) and constant[1].warmup_fraction == 0


def test_shards_are_consecutive_and_wrap_around():
    rows = shard_rows(10, 16, [32, 64, 100])
    assert [r.tolist() for r in rows] == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9, 0, 1, 2]]


def splits(n_train=48, seq_len=32):
    return TextSplits(calibration=calib(16, seq_len, seed=1), train=calib(n_train, seq_len, seed=2),
                      eval=calib(8, seq_len, seed=3), config=TextConfig(seq_len=seq_len))


def test_staged_pruning_reaches_the_budget_and_trains_between_stages():
    # Larger initial weights make pruning hurt; a few repeated sequences make distillation measurable in few steps.
    model = gqa_model("llama", initializer_range=0.1)
    original = copy.deepcopy(model)
    a = adapter_for(model)
    _, before = count_parameters(model)
    few = calib(4, 32, seed=2)
    data = TextSplits(calibration=calib(16, 32, seed=1), train=few.repeat(12, 1), eval=few, config=TextConfig(seq_len=32))
    recover = RecoverConfig(batch_size=4, lr=1e-3, eval_sequences=8, eval_every=0, progress=False)
    cfg = PruneConfig(sparsity=0.4, stages=3, stage_tokens=640, recover=recover, importance="taylor", step=0.1, **FAST)
    report = prune(model, cfg, data=data)

    assert [type(s) for s in report.stages] == [StageReport] * 3
    targets = stage_targets(before, 0.4, 3)
    for st, target, tokens in zip(report.stages, targets, [320, 640, 960]):
        assert st.non_embedding_after <= target
        assert st.train_tokens >= tokens and st.train_steps == -(-tokens // (4 * 32))
        assert st.substeps >= 1 and st.calibration_tokens > 0
    # the parameter count falls stage by stage, to the budget (within one kv group of this tiny model)
    after = [s.non_embedding_after for s in report.stages]
    assert after == sorted(after, reverse=True) and len(set(after)) == 3
    assert report.non_embedding_after == after[-1] == count_parameters(model)[1]
    assert before * 0.6 - layer_groups(a.layer(0)).kv_group_params <= report.non_embedding_after <= before * 0.6
    # training happened: the embeddings (never pruned) moved, and each later stage's distillation
    # pulled the model well toward the teacher
    assert not torch.equal(a.embed.weight, original.model.embed_tokens.weight)
    for st in report.stages[1:]:
        assert st.kl_after < 0.8 * st.kl_before
    # the teacher is the unpruned original: the last KL it reported is the KL to that model
    ev = evaluate(model, few, reference=original, config=EvalConfig(max_sequences=None, progress=False))
    assert report.stages[-1].kl_after == pytest.approx(ev.kl_to_reference, rel=1e-4)
    assert "stage 3: pruned to" in str(report)
    assert report.layers[0].mlp[0] == 256 and report.layers[0].mlp[1] == a.layer(0).mlp_width
    assert report.to_dict()["stages"][0]["stage"] == 1
    assert_generates_with_cache(model)


def test_staged_pruning_needs_a_training_split_and_touches_nothing_without_it():
    model = gqa_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(CompressError, match="needs a TextSplits with a train split"):
        prune(model, 0.3, data=calib(), stages=2, stage_tokens=64, **FAST)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_staged_pruning_checks_the_whole_budget_before_the_first_stage():
    model = gqa_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(CompressError, match=r"sparsity 0.98 cannot be reached; at most [\d.]+% of the non-embedding"):
        prune(model, 0.98, data=splits(), stages=2, stage_tokens=64, method="uniform", importance="magnitude", **FAST)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_pruning_alone_refuses_stages_and_names_the_verb_that_trains():
    model = gqa_model()
    with pytest.raises(ConfigError) as err:
        prune_only(model, 0.3, data=calib(), stages=2, stage_tokens=64, **FAST)
    assert str(err.value) == (
        "stages=2 (Adapt-Accel) trains between pruning stages, which pruning alone does not do; "
        "call compress.prune(model, config, data) or compress.staged.prune_in_stages instead."
    )
