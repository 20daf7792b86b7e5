import torch

from compress.pruning import allocation as alloc


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_update_rule_on_hand_made_numbers():
    s = t(0.1, 0.5, 0.98, 0.0)
    imp = t(1.0, -1.0, -1.0, 1.0)
    # s + 0.02 - 0.02 * I, clipped to [0, 0.99]
    assert torch.allclose(alloc.update(s, 0.02, 0.02, imp), t(0.1, 0.54, 0.99, 0.0))
    # a larger amplitude can push a layer below zero: clipped
    assert torch.allclose(alloc.update(s, 0.02, 0.05, imp), t(0.07, 0.57, 0.99, 0.0))


def test_normalised_importance_has_mean_zero_and_max_magnitude_one():
    assert torch.allclose(alloc.normalise(t(3.0, 1.0, 2.0)), t(1.0, -1.0, 0.0))
    assert torch.allclose(alloc.normalise(t(0.0, 1.0, 5.0)), t(-2.0, -1.0, 3.0) / 3)
    assert torch.equal(alloc.normalise(t(2.0, 2.0, 2.0)), t(0.0, 0.0, 0.0))
    # layers at the cap are left out of the normalisation
    active = torch.tensor([True, False, True])
    assert torch.allclose(alloc.normalise(t(3.0, 9.0, 1.0), active), t(1.0, 0.0, -1.0))
    assert torch.equal(alloc.normalise(t(3.0, 9.0), torch.tensor([True, False])), t(0.0, 0.0))


def test_lower_cosine_similarity_means_more_important():
    imp = alloc.normalise(alloc.layer_importance(t(0.9, 0.5, 0.7)))
    assert torch.allclose(imp, t(-1.0, 1.0, 0.0))


def test_adapt_differs_from_uniform_when_importances_differ_and_equals_it_otherwise():
    def run(importance, steps=5):
        s = torch.zeros(3, dtype=torch.float64)
        for _ in range(steps):
            s = alloc.update(s, 0.02, 0.02, importance)
        return s

    uniform = run(torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(uniform, t(0.1, 0.1, 0.1))
    adapt = run(alloc.normalise(alloc.layer_importance(t(0.9, 0.8, 0.7))))
    assert torch.allclose(adapt, t(0.2, 0.1, 0.0))  # the least important layer is pruned most
    same = run(alloc.normalise(alloc.layer_importance(t(0.8, 0.8, 0.8))))
    assert torch.equal(same, uniform)


def test_keep_counts_round_and_never_reach_zero():
    assert alloc.keep_channels(256, 256, 0.0, 8) == 256
    assert alloc.keep_channels(256, 256, 0.25, 8) == 192
    assert alloc.keep_channels(256, 256, 0.26, 8) == 192  # 189.4 -> nearest multiple of 8
    assert alloc.keep_channels(256, 200, 0.1, 8) == 200  # never regrows
    assert alloc.keep_channels(100, 100, 0.01, 8) == 96  # a pruned width becomes a multiple
    assert alloc.keep_channels(256, 256, 0.99, 8) == 8  # floor: round_to channels
    assert alloc.keep_channels(4, 4, 0.99, 8) == 4
    assert alloc.keep_groups(3, 3, 0.3) == 3  # a kv group goes only once s covers one
    assert alloc.keep_groups(3, 3, 0.34) == 2
    assert alloc.keep_groups(3, 3, 0.99) == 1
    assert alloc.keep_groups(2, 2, 0.5) == 1


def test_last_step_is_shortened_to_land_on_the_budget():
    layers = [alloc.LayerBudget(mlp_init=256, kv_init=2, mlp_channel_params=10, kv_group_params=100)] * 2
    now = [(256, 2), (256, 2)]
    params = lambda s: alloc.prunable_params(layers, alloc.widths_at(layers, now, s, 8))  # noqa: E731
    full = params(torch.zeros(2))
    target = full - 2 * 8 * 10 * 3 + 1  # three blocks of 8 channels per layer, and a bit
    s = alloc.step(torch.zeros(2, dtype=torch.float64), 0.5, 0.0, torch.zeros(2), params, target)
    assert params(s) <= target
    assert target - params(s) < 2 * 8 * 10  # within one rounding step (8 channels, both layers)
    assert float(s[0]) < 0.5
    big = alloc.step(torch.zeros(2, dtype=torch.float64), 0.01, 0.0, torch.zeros(2), params, 0)
    assert torch.allclose(big, t(0.01, 0.01))  # budget far away: a full step
