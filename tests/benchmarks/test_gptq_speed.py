"""benchmarks/gptq_speed.py: the refusal of a checkout without compress, and one child's measurements."""
import argparse
import json

import torch

from tests.bench_script import load_benchmark


def test_against_a_folder_without_compress_is_refused(tmp_path, capsys):
    bench = load_benchmark("gptq_speed")
    assert bench.main(["--against", str(tmp_path)]) == 2
    assert "holds no compress package" in capsys.readouterr().err


def test_a_child_reports_time_memory_work_and_a_hash_of_the_codes(tmp_path, tiny_dir, capsys):
    bench = load_benchmark("gptq_speed")
    model_dir = tiny_dir
    calib = tmp_path / "calib.pt"
    torch.save(torch.randint(4, 300, (8, 32), generator=torch.Generator().manual_seed(0)), calib)
    reports = []
    for _ in range(2):
        args = argparse.Namespace(model=str(model_dir), calib=str(calib), plain=False, symmetric=False, group_size=32)
        assert bench.child(args) == 0
        reports.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    first, again = reports
    assert first["quantise_seconds"] > 0 and first["peak_rss_mib"] > 0
    assert first["linear_units_per_batch_layer"] > 0
    assert first["packed_weights_sha256"] == again["packed_weights_sha256"]  # deterministic: the hash can compare runs
