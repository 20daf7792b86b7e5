"""benchmarks/size_quality.py end to end on a tiny Llama: uniform rows, a budget sweep, both texts, JSON + PNG."""
import json

import pytest

from tests.bench_script import load_benchmark


def _load():
    return load_benchmark("size_quality")


@pytest.mark.slow  # tiny model, but 16 rows on two texts: about a minute on a busy 2-core machine
def test_budget_rows_fit_their_targets_and_every_row_is_measured_on_both_texts(tmp_path, tiny_dir):
    bench = _load()
    out = tmp_path / "sq"
    assert bench.main(["--model", str(tiny_dir), "--windows", "2", "--seq-len", "32", "--targets", "60KiB", "90KiB",
                       "--gptq-targets", "90KiB", "--skip-peers", "--data", "shakespeare", "--uniform-bits", "3", "--int3-targets", "60KiB", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    rows = result["rows"]
    for target, label in ((60 * 1024, "budget 60KiB"), (90 * 1024, "budget 90KiB"), (90 * 1024, "budget 90KiB GPTQ"),
                          (60 * 1024, "budget 60KiB int3")):
        assert rows[label]["bytes"] <= target < rows["original (bf16 file)"]["bytes"]
        assert rows[label]["predicted_bytes"] <= target
    assert rows["budget 60KiB"]["bytes"] < rows["budget 90KiB"]["bytes"]
    assert not any(f.startswith("int3") for f in rows["budget 60KiB"]["choices"].values())
    assert {"int3 g128 RTN", "int3 g32 RTN + int4 emb", "ternary RTN"} <= set(rows) and "int4 g64 RTN" not in rows
    for row in rows.values():
        assert set(row["domains"]) == {"shakespeare", "news"}
        assert all(d["perplexity"] > 1 for d in row["domains"].values())
    assert rows["original (bf16 file)"]["domains"]["news"]["kl"] == 0
    assert rows["budget 90KiB"]["domains"]["news"]["kl"] > 0
    assert "| budget 60KiB |" in bench.table(result)
