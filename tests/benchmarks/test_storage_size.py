"""benchmarks/storage_size.py end to end on a tiny Llama: every checkpoint saved, reloaded and measured on both texts."""
import json

import pytest

from tests.bench_script import load_benchmark


def _load():
    return load_benchmark("storage_size")


def test_rows_shrink_in_order_and_quality_is_measured_on_both_texts(tmp_path, tiny_dir):
    bench = _load()
    assert bench.main(["--model", str(tiny_dir), "--windows", "1", "--seq-len", "32", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "storage_size.json").read_text())
    assert (tmp_path / "storage_size.png").stat().st_size > 0
    rows = {r["label"]: r for r in result["rows"]}
    size = {k: r["weights_bytes"] for k, r in rows.items()}
    assert size["float, bfloat16"] < 0.55 * size["float, float32"]
    assert size["int4 g128, bfloat16"] < size["int4 g128, float32"]
    assert size["+ int4 g32 embeddings"] < size["+ int8 embeddings"] < size["int4 g128, bfloat16"]
    assert set(result["original_perplexity"]) == {"shakespeare (held-out)", "news (unseen)"}
    for text in result["original_perplexity"]:
        q = {k: r["quality"][text] for k, r in rows.items()}
        assert q["float, float32"]["kl"] == pytest.approx(0, abs=1e-6)  # stored float32: the original itself
        assert q["float, bfloat16"]["kl"] > 1e-9  # rounding shows
        assert all(v["perplexity"] > 1 for v in q.values())
    assert "| + int8 embeddings |" in bench.table(result)
