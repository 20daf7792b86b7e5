"""benchmarks/prune_refit.py: its arguments and its plot (the measurement itself is a benchmark)."""
import pytest

from tests.bench_script import load_benchmark

bench = load_benchmark("prune_refit")


def test_an_arm_that_is_neither_none_nor_a_damping_is_refused(capsys):
    with pytest.raises(SystemExit) as err:
        bench.main(["--arms", "none", "lots"])
    assert err.value.code == 2
    assert "refit_damp number" in capsys.readouterr().err


def test_plot_writes_a_png_for_rows_with_and_without_distillation(tmp_path):
    m = lambda kl: {d: {"perplexity": 60.0, "ratio": 1.2, "kl": kl, "top1": 0.5} for d in ("shakespeare", "news")}  # noqa: E731
    result = {"settings": {"sparsity": 0.2, "steps": 40},
              "rows": [{"arm": "none", "pruned": m(1.0), "distilled": m(0.7)}, {"arm": "0.1", "pruned": m(0.8)}]}
    path = bench.plot(result, tmp_path / "r.png")
    assert path.stat().st_size > 1000
    assert "news 60.00 (1.20x, KL 0.500)" in bench.line(m(0.5))
