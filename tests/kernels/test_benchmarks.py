"""The benchmark scripts: they refuse to run without a GPU, and count bytes as documented."""
from __future__ import annotations

import pytest
import torch

from tests.bench_script import load_benchmark


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
@pytest.mark.parametrize("script", ["kernel_matmul", "kernels_tune"])
def test_scripts_say_they_need_a_gpu(script, capsys, tmp_path):
    assert load_benchmark(script).main(["--out" if script == "kernels_tune" else "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"benchmarks/{script}.py needs a CUDA GPU and none is visible here; " + (
        "run it on a GPU machine." if script == "kernel_matmul" else "run it on the GPU you tune for."
    )
    assert list(tmp_path.iterdir()) == []  # no fake numbers written


def test_benchmark_covers_the_issue_shapes_and_counts_bytes():
    bench = load_benchmark("kernel_matmul")
    assert {(4096, 4096), (8192, 8192), (576, 576), (576, 1536), (1536, 576), (49152, 576)} <= set(bench.SHAPES.values())
    assert bench.BATCHES == (1, 16, 2048)
    N, K = 4096, 4096
    fp16 = bench.METHODS["torch_fp16"].weight_bytes(N, K)
    int4 = bench.METHODS["int4_g128"].weight_bytes(N, K)
    ternary = bench.METHODS["ternary"].weight_bytes(N, K)
    assert fp16 == 2 * N * K
    assert fp16 / int4 == pytest.approx(3.76, abs=0.01)  # KERNELS.md section 6: s+z at g128
    assert fp16 / ternary == pytest.approx(8 / (1 + 8 / K))  # 2 bits per weight + an fp16 scale per row
    assert fp16 / bench.METHODS["int3_g128"].weight_bytes(N, K) == pytest.approx(16 / 3.25)  # 3 bits + s, z at g128
    assert bench._parse_shape("576x1536") == ("576x1536", (576, 1536))
    with pytest.raises(SystemExit, match="unknown shape 'big'"):
        bench._parse_shape("big")


def test_plot_writes_a_png_from_result_rows(tmp_path):
    pytest.importorskip("matplotlib")
    bench = load_benchmark("kernel_matmul")
    rows = [
        {"shape": shape, "M": M, "method": method, "us": us, "gbps": 1000.0 / us, "speedup": 10.0 / us}
        for shape in ("4096x4096", "smollm2-qo-576x576")
        for M in (1, 16)
        for method, us in (("torch_fp16", 10.0), ("int4_g128", 4.0), ("ternary", 2.5))
    ]
    rows.append({"shape": "4096x4096", "M": 1, "method": "bnb_nf4", "skipped": "not installed"})
    path = tmp_path / "kernels-test.png"
    bench._plot(rows, "Fake GPU", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_tuner_keeps_the_fastest_config_that_matches_the_reference(triton_kernels, monkeypatch):
    # Nothing can be timed under the interpreter, so do_bench is faked: of the three
    # sampled candidates the first is "fastest" but returns wrong numbers, so the
    # tuner must pick the second.
    import triton.testing

    from compress.kernels import triton_int4, tuning

    tune = load_benchmark("kernels_tune")
    M, N, K, G = 3, 37, 64, 32
    space = tuning.candidates("int4_splitk", M, N, K, G)
    picks = [space[i * len(space) // 3] for i in range(3)]
    fake_ms = {picks[0]: 1.0, picks[1]: 2.0, picks[2]: 3.0}
    real, last = triton_int4.int4_splitk, []

    def kernel(x, *weight, config):
        last[:] = [config]
        y = real(x, *weight, config=config)
        return y + 1.0 if config == picks[0] else y

    monkeypatch.setattr(triton_int4, "int4_splitk", kernel)
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, warmup, rep: (fn(), fake_ms.get(last[0], 9.0))[1])
    result = tune.tune_one("int4_splitk", M, N, K, G, max_candidates=3, device="cpu")
    assert result is not None and result["tried"] == 3
    assert tuning.KernelConfig.from_dict(result) == picks[1] and result["us"] == 2000.0
