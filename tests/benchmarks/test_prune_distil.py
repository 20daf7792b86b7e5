"""benchmarks/prune_distil.py: arm specs and merging partial results (the measurement itself is a benchmark)."""
import argparse
import json

import pytest

from tests.bench_script import load_benchmark

bench = load_benchmark("prune_distil")


def test_arm_specs():
    assert bench.parse_arm("adapt") == ("adapt", None)
    assert bench.parse_arm("uniform:0.3333") == ("uniform:0.3333", 0.3333)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown arm 'bogus'"):
        bench.parse_arm("bogus")
    with pytest.raises(argparse.ArgumentTypeError, match="must be a sparsity"):
        bench.parse_arm("adapt:x")
    with pytest.raises(argparse.ArgumentTypeError, match="between 0 and 1"):
        bench.parse_arm("adapt:1.5")


def _part(tmp_path, name, sparsity=0.3, original=50.0, news_ratio=3.0):
    domains = {"shakespeare": {"perplexity": original, "ratio": 1.0, "kl": None, "top1": None, "sequences": 8},
               "news": {"perplexity": original, "ratio": 1.0, "kl": None, "top1": None, "sequences": 8}}
    row = {"arm": name, "distilled": {"shakespeare": {"perplexity": 60.0, "ratio": 1.2, "kl": 0.5, "top1": 0.6},
                                      "news": {"perplexity": 150.0, "ratio": news_ratio, "kl": 1.4, "top1": 0.4}}}
    part = {"command": f"run {name}", "date": "d", "machine": {}, "settings": {"sparsity": sparsity, "steps": 40, "arms": [name]},
            "original": domains, "rows": [row]}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(part))
    return str(path)


def test_merge_joins_rows_and_names_the_best_on_news(tmp_path):
    out = tmp_path / "merged.json"
    assert bench.merge([_part(tmp_path, "adapt", news_ratio=3.7), _part(tmp_path, "uniform", news_ratio=3.6)], str(out)) == 0
    merged = json.loads(out.read_text())
    assert [r["arm"] for r in merged["rows"]] == ["adapt", "uniform"]
    assert merged["best_on_news"] == "uniform"
    assert out.with_suffix(".png").stat().st_size > 0


def test_merge_refuses_runs_that_are_not_comparable(tmp_path):
    with pytest.raises(SystemExit, match="other settings"):
        bench.merge([_part(tmp_path, "adapt"), _part(tmp_path, "uniform", sparsity=0.4)], str(tmp_path / "m.json"))
    with pytest.raises(SystemExit, match="measured the original differently"):
        bench.merge([_part(tmp_path, "adapt"), _part(tmp_path, "uniform", original=51.0)], str(tmp_path / "m.json"))
