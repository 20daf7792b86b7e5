import math

import pytest

from compress.recovery import lr_factor, qat_lambda


def test_warmup_is_linear_and_starts_above_zero():
    # 100 steps, 10% warm-up: steps 0..9 climb to the peak
    assert lr_factor(0, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(4, 100, "wsd", 0.1) == pytest.approx(0.5)
    assert lr_factor(9, 100, "constant", 0.1) == pytest.approx(1.0)


def test_cosine_key_steps():
    f = lambda s: lr_factor(s, 110, "cosine", warmup_fraction=10 / 110, min_ratio=0.1)  # noqa: E731
    assert f(10) == pytest.approx(1.0)  # first step after warm-up: the peak
    assert f(60) == pytest.approx(0.55)  # half-way through the decay: (1 + m) / 2
    assert f(109) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert f(109) > 0.1 and f(109) < 0.11
    values = [f(s) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_wsd_key_steps():
    f = lambda s: lr_factor(s, 100, "wsd", warmup_fraction=0.1, decay_fraction=0.2, min_ratio=0.0)  # noqa: E731
    assert [f(s) for s in (10, 50, 79)] == [1.0, 1.0, 1.0]  # stable phase
    assert f(80) == pytest.approx(1.0)  # decay starts from the peak
    assert f(90) == pytest.approx(0.5)
    assert f(99) == pytest.approx(0.05)
    assert lr_factor(99, 100, "wsd", 0.1, 0.0) == 1.0  # no decay phase


def test_no_warmup_and_bad_step():
    assert lr_factor(0, 10, "cosine", 0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="outside the schedule"):
        lr_factor(10, 10)


def test_qat_lambda_ramp():
    assert [qat_lambda(s, 4) for s in (0, 1, 2, 4, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert qat_lambda(0, 0) == 1.0
