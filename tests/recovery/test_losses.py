import math

import pytest
import torch
import torch.nn.functional as F

from compress.recovery import (
    OfflineTeacher, RecoverError, ce_loss, hidden_loss, kd_loss, precompute_teacher, topk_kd_loss, topk_logprobs,
)
from tests.recovery.helpers import damaged_copy, sharp_teacher, token_data


def test_kd_is_zero_when_student_equals_teacher():
    z = torch.randn(3, 5, 11)
    assert kd_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(z, z + 3.0, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)  # shift-invariant


def test_kd_matches_a_hand_computation():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    want = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        p, q = softmax(trow), softmax(srow)
        want += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kd_loss(s, t).item() == pytest.approx(want / 2, rel=1e-6)


def test_temperature_divides_logits_and_scales_by_t_squared():
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    T = 3.0
    plain = kd_loss(s / T, t / T, temperature=1.0)
    assert kd_loss(s, t, temperature=T).item() == pytest.approx(T * T * plain.item(), rel=1e-5)
    # a higher temperature flattens both distributions: the KL itself shrinks
    assert plain.item() < kd_loss(s, t).item()


def test_kd_gradient_reaches_student_only_and_points_to_teacher():
    s = torch.zeros(2, 5, requires_grad=True)
    t = torch.tensor([[4.0, 0, 0, 0, 0], [0, 0, 0, 0, 4.0]])
    kd_loss(s, t).backward()
    assert s.grad[0, 0] < 0 and s.grad[1, 4] < 0  # a descent step raises the teacher's favourite


def test_ce_loss_is_cross_entropy():
    z, y = torch.randn(2, 3, 9), torch.randint(0, 9, (2, 3))
    assert ce_loss(z, y).item() == pytest.approx(F.cross_entropy(z.reshape(-1, 9), y.reshape(-1)).item(), rel=1e-6)


def test_hidden_loss_is_the_relative_squared_error_per_token_averaged_over_layers():
    t = [torch.tensor([[[3.0, 4.0], [100.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])]
    s = [torch.tensor([[[3.0, 5.0], [101.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])]
    # layer 1: tokens 1/25 and 1/10000 (the huge token weighs no more than the small one); layer 2: 0
    assert hidden_loss(s, t).item() == pytest.approx(((1 / 25 + 1 / 10000) / 2) / 2)
    assert hidden_loss(t, t).item() == 0.0
    with pytest.raises(ValueError, match="2 hidden states and the teacher 1"):
        hidden_loss(s, t[:1])


def test_topk_with_all_but_one_token_equals_the_full_kl():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    lp, ix = topk_logprobs(t, 9, temperature=2.0)
    # with one token left the tail bucket is exact
    assert topk_kd_loss(s, lp, ix, 2.0).item() == pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-4)


def test_topk_is_a_lower_bound_that_tightens_with_k():
    torch.manual_seed(0)
    s, t = torch.randn(50, 200) * 2, torch.randn(50, 200) * 3
    full = kd_loss(s, t).item()
    approx = [topk_kd_loss(s, *topk_logprobs(t, k)).item() for k in (4, 32, 128)]
    assert all(a <= full + 1e-5 for a in approx)
    assert approx[0] < approx[1] < approx[2]
    assert approx[2] == pytest.approx(full, rel=0.05)
    assert topk_kd_loss(t, *topk_logprobs(t, 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_offline_teacher_round_trip_and_approximation(tmp_path):
    teacher = sharp_teacher()
    student = damaged_copy(teacher)
    ids = token_data(10, 16)
    off = precompute_teacher(teacher, ids, tmp_path / "topk", k=128, temperature=1.0, batch_size=3, progress=False)
    assert isinstance(off, OfflineTeacher) and OfflineTeacher(tmp_path / "topk").k == 128
    rows = torch.tensor([7, 0, 3])
    lp, ix = off.lookup(rows)
    assert lp.shape == ix.shape == (3, 15, 128)
    with torch.no_grad():
        t_logits = teacher(input_ids=ids[rows]).logits[:, :-1]
        s_logits = student(input_ids=ids[rows]).logits[:, :-1]
    want_lp, want_ix = topk_logprobs(t_logits, 128)
    assert torch.equal(ix, want_ix)
    assert torch.allclose(lp, want_lp, atol=1e-2)  # stored as float16
    full = kd_loss(s_logits, t_logits).item()
    approx = topk_kd_loss(s_logits, lp, ix).item()
    # this random teacher leaves ~5% of its mass outside the top 128 of 320 tokens
    assert 0 < approx <= full * 1.01 and approx == pytest.approx(full, rel=0.15)


def test_offline_teacher_refuses_other_data_and_temperature(tmp_path):
    teacher = sharp_teacher()
    ids = token_data(6, 8)
    off = precompute_teacher(teacher, ids, tmp_path / "topk", k=8, temperature=2.0, progress=False)
    from compress.recovery.batches import fingerprint_tokens

    with pytest.raises(RecoverError, match="computed for other training data"):
        off.check(ids[:5], fingerprint_tokens(ids[:5]), 320, 2.0)
    with pytest.raises(RecoverError, match="temperature 2 and the config asks for 1"):
        off.check(ids, fingerprint_tokens(ids), 320, 1.0)
    with pytest.raises(RecoverError, match="vocabulary of 320 and the student has 100"):
        off.check(ids, fingerprint_tokens(ids), 100, 2.0)
    with pytest.raises(RecoverError, match="has no topk.json"):
        OfflineTeacher(tmp_path)
