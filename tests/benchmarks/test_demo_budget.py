"""benchmarks/demo_budget.py and prune_allocation.py: their arguments, arms and plot (the measurements are benchmarks)."""
import pytest

from tests.bench_script import load_benchmark

demo_budget = load_benchmark("demo_budget")
allocation = load_benchmark("prune_allocation")


def test_demo_budget_refuses_a_step_count_that_is_not_positive(capsys):
    with pytest.raises(SystemExit) as err:
        demo_budget.main(["--steps", "40", "0"])
    assert err.value.code == 2 and "positive step counts" in capsys.readouterr().err
    for flags, message in ((["--sparsity", "1.5"], "between 0 and 1"), (["--group-size", "0"], "positive group size")):
        with pytest.raises(SystemExit) as err:
            demo_budget.main(flags)
        assert err.value.code == 2 and message in capsys.readouterr().err


def test_demo_budget_plot_draws_both_domains_before_and_after_int4(tmp_path):
    m = lambda r: {d: {"perplexity": 60.0, "ratio": r, "kl": 0.5, "top1": 0.5} for d in ("shakespeare", "news")}  # noqa: E731
    result = {"prune": {"sparsity": 0.1}, "pruned": m(2.2), "rows": [{"steps": s, "distilled": m(1.8), "quantized": m(1.9)} for s in (40, 80)]}
    assert demo_budget.plot(result, tmp_path / "d.png").stat().st_size > 1000
    assert "news 60.00 (1.800x, KL 0.500)" in demo_budget._line(m(1.8))


def test_allocation_arms_become_prune_config_fields_and_bad_arms_are_refused(capsys):
    assert allocation.arm_fields("A=step", 0.1) == {"method": "adapt", "amplitude": 0.1}
    assert allocation.arm_fields("A=0.02+protect0-29", 0.1) == {"method": "adapt", "amplitude": 0.02,
                                                                "protect_layers": (0, 29)}
    assert allocation.arm_fields("uniform", 0.1) == {"method": "uniform"}
    assert allocation.arm_fields("A=step+calib128x256+imp=activation", 0.1) == {
        "method": "adapt", "amplitude": 0.1, "calib_samples": 128, "calib_seq_len": 256, "importance": "activation"}
    with pytest.raises(SystemExit) as err:
        allocation.main(["--arms", "A=0.1", "wide"])
    assert err.value.code == 2 and "protectL" in capsys.readouterr().err
