"""benchmarks/embedding_domains.py: its argument check (the measurement is a benchmark)."""
import pytest

from tests.bench_script import load_benchmark

embedding_domains = load_benchmark("embedding_domains")


def test_a_window_count_that_is_not_positive_is_refused_before_loading_anything(capsys):
    with pytest.raises(SystemExit) as err:
        embedding_domains.main(["--windows", "0"])
    assert err.value.code == 2 and "positive number of windows" in capsys.readouterr().err
