import pytest
import torch

from compress.pruning.scores import (
    channel_sums,
    element_scores,
    fold,
    kv_group_scores,
    mlp_channel_scores,
    top_k,
)

# A layer with hidden 2 and 3 intermediate channels: gate/up [3, 2], down [2, 3].
GATE = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0]])
UP = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
DOWN = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 1.0]])


def test_magnitude_is_the_l2_norm_of_the_coupled_weights():
    got = mlp_channel_scores("magnitude", [GATE, UP], DOWN)
    # channel 0: 1+4 (gate) + 1 (up) + 4 (down col) = 10; channel 1: 0+1+1 = 2; channel 2: 9+0+2 = 11
    assert torch.allclose(got, torch.tensor([10.0, 2.0, 11.0]).sqrt())


def test_taylor_sums_abs_weight_times_gradient_over_the_group():
    g_gate = torch.full_like(GATE, 0.5)
    g_up = torch.full_like(UP, -1.0)
    g_down = torch.tensor([[1.0, 1.0, -2.0], [1.0, 3.0, 0.0]])
    got = mlp_channel_scores("taylor", [GATE, UP], DOWN, in_grads=[g_gate, g_up], out_grad=g_down)
    # ch0: .5*(1+2) + 1 + 2 = 4.5; ch1: 0 + 1 + 3 = 4; ch2: .5*3 + 0 + (2 + 0) = 3.5
    assert torch.allclose(got, torch.tensor([4.5, 4.0, 3.5]))


def test_activation_score_is_flap_fluctuation_of_the_consumer_inputs():
    var = torch.tensor([1.0, 4.0, 0.5])
    got = mlp_channel_scores("activation", [GATE, UP], DOWN, act_var=var)
    # Var(X_j) * ||down[:, j]||^2 = [1*4, 4*1, 0.5*2]
    assert torch.allclose(got, torch.tensor([4.0, 4.0, 1.0]))


def test_kv_group_scores_fold_query_heads_onto_their_kv_head():
    # head_dim 1, 4 query heads, 2 kv heads (n_rep 2), hidden 1: weights are columns of scalars.
    q = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    k = torch.tensor([[1.0], [0.0]])
    v = torch.tensor([[0.0], [2.0]])
    o = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    got = kv_group_scores("magnitude", q, k, v, o, head_dim=1, n_rep=2)
    # group 0 = q heads 0,1 + kv 0: 1+4 + 1 (o) + 1 (k) = 7; group 1 = q heads 2,3 + kv 1: 9+16 + 1 + 4 = 30
    assert torch.allclose(got, torch.tensor([7.0, 30.0]).sqrt())
    var = torch.tensor([1.0, 1.0, 2.0, 3.0])
    act = kv_group_scores("activation", q, k, v, o, head_dim=1, n_rep=2, o_act_var=var)
    assert torch.allclose(act, torch.tensor([1.0, 3.0]))
    ones = [torch.ones_like(t) for t in (q, k, v, o)]
    taylor = kv_group_scores("taylor", q, k, v, o, head_dim=1, n_rep=2, grads=ones)
    assert torch.allclose(taylor, torch.tensor([1 + 2 + 1 + 1.0, 3 + 4 + 1 + 2.0]))


def test_helpers():
    assert torch.equal(fold(torch.arange(6.0), 2), torch.tensor([1.0, 5.0, 9.0]))
    assert torch.equal(channel_sums([torch.ones(2, 3)], [torch.ones(4, 2)]), torch.tensor([7.0, 7.0]))
    assert top_k(torch.tensor([0.5, 3.0, 1.0, 3.0]), 2) == [1, 3]
    assert top_k(torch.tensor([1.0, 1.0, 1.0]), 2) == [0, 1]  # ties keep the lower index
    with pytest.raises(ValueError):
        element_scores("taylor", GATE)  # no gradient
    with pytest.raises(ValueError):
        mlp_channel_scores("activation", [GATE], DOWN)  # no statistics
