"""The end-to-end decode benchmark (benchmarks/model_decode.py) and QuantLinear models under torch.compile.

On the CPU the benchmark runs its ``--smoke`` configuration: a tiny random
model, fp32, eager, the reference kernels.  That checks the script end to end
(and that its static-cache decoding is right); the speed figures come from a
GPU run.  The CUDA tests check the recorded graphs against eager decoding.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compress
from compress.cli import main as cli_main
from compress.quantization import QuantConfig
from tests.bench_script import load_benchmark
from tests.threads import one_torch_thread

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "model_decode.py"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("model_decode")


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls gain nothing from threads, and stall on a CPU shared with other work.
    with one_torch_thread():
        yield


def _tiny(bench, variant: str = "dense", device: str = "cpu", dtype=torch.float32):
    model, _ = bench.build_model(bench.SPECS["tiny-random"], torch.device(device), dtype, seed=0)
    config = bench.quant_config(variant, 128)
    if config is not None:
        compress.quantize(model, config)
    return model


# --------------------------------------------------------------------------- the smoke run

def test_smoke_run_writes_every_row_with_speedups_and_memory(bench, tmp_path):
    code = bench.main(["--smoke", "--out-dir", str(tmp_path), "--variants", "int4", "ternary+head"])
    assert code == 0
    report = json.loads((tmp_path / "decode-smoke-cpu.json").read_text())
    assert report["complete"] and report["smoke"] and "not a speed claim" in report["note"]
    assert report["device"].startswith("CPU") and report["torch"] == torch.__version__
    rows = {(r["variant"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {(v, b) for v in ("dense", "int4", "ternary+head") for b in (1, 2)}
    for (variant, batch), row in rows.items():
        assert "error" not in row and row["decode_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0
        # 2 layers x (keys + values) x batch x 2 kv heads x (8 prompt + 4 new) positions x head_dim 32 x fp32
        assert row["kv_cache_bytes"] == 2 * 2 * batch * 2 * 12 * 32 * 4
        assert row["kernel_fallbacks"] == {}
    assert rows["dense", 1]["decode_speedup"] == 1.0 and rows["dense", 1]["quantisation"] is None
    int4, ternary = rows["int4", 1], rows["ternary+head", 1]
    assert int4["quantisation"]["config"] == "int4 g128 sym rtn" and int4["quantisation"]["modules"] == 14
    assert ternary["quantisation"]["modules"] == 15  # the untied output head too
    assert int4["kernels"] == {"backend": "reference"}
    dense_bytes = rows["dense", 1]["weights_bytes"]
    assert dense_bytes / int4["weights_bytes"] == pytest.approx(int4["weights_ratio"])
    assert ternary["weights_bytes"] < int4["weights_bytes"] < dense_bytes
    png = tmp_path / "decode-smoke-cpu.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decode-smoke-cpu.json", "decode-smoke-cpu.png"]  # no temp files left


def test_cli_bench_model_runs_the_script(tmp_path, capsys):
    argv = ["bench", "model", "--smoke", "--out-dir", str(tmp_path), "--variants", "ternary", "--batches", "1",
            "--new-tokens", "2", "--no-plot"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "tiny-random    ternary       batch 1" in out and "decode-smoke-cpu.json" in out
    rows = json.loads((tmp_path / "decode-smoke-cpu.json").read_text())["rows"]
    assert [(r["variant"], r["batch"]) for r in rows] == [("dense", 1), ("ternary", 1)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_gpu_and_without_smoke_it_says_so(bench, tmp_path, capsys):
    assert bench.main(["--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("benchmarks/model_decode.py needs a CUDA GPU and none is visible here;") and "--smoke" in err
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []  # no numbers without a GPU


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batches", "1", "0"], "--batches 0: batch sizes, --prompt-len, --new-tokens and --reps must be at least 1."),
        (["--reps", "0"], "--reps 0: batch sizes, --prompt-len, --new-tokens and --reps must be at least 1."),
        (["--warmup", "-1"], "--warmup -1: the number of warm-up runs cannot be negative."),
        (["--graphs", "capture"],
         "--graphs capture records CUDA graphs and needs a CUDA GPU; use --graphs none or compile on the CPU."),
        (["--prompt-len", "500", "--new-tokens", "100"],
         "--prompt-len plus --new-tokens is 600, more than the 512 positions of tiny-random; use shorter ones."),
        (["--group-size", "100"], "group_size must be a power of two"),
    ],
)
def test_bad_settings_get_one_sentence_and_exit_2(args, message, tmp_path, capsys):
    assert cli_main(["bench", "model", "--smoke", "--out-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"compress-lm bench: {message}") and "\n" not in err
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_head_variants_are_skipped_when_the_head_is_tied(bench):
    spec = bench.ModelSpec("tiny-tied", "tiny, tied head", {**bench.SPECS["tiny-random"].config, "tie_word_embeddings": True})
    settings = bench.resolve_settings(bench.build_parser().parse_args(["--smoke", "--variants", "int4+head", "--batches", "1"]))
    rows: list[dict] = []
    info = bench.bench_model(spec, settings, rows.append)
    assert info["weights"] == "random weights"
    assert [r["variant"] for r in rows] == ["dense", "int4+head"]
    assert rows[1] == {"model": "tiny-tied", "variant": "int4+head",
                       "skipped": "the output head is tied to the input embeddings, so compress.quantize keeps it"}


# --------------------------------------------------------------------------- decoding is right

@pytest.mark.parametrize("variant", ["dense", "int4", "int3", "ternary+head"])
def test_static_cache_decoding_matches_a_full_forward(bench, variant):
    # The benchmark builds positions and the causal mask itself; greedy tokens must be the
    # ones a plain forward over the whole sequence predicts, for every batch row.
    model = _tiny(bench, variant)
    with torch.no_grad():
        decoder = bench.Decoder(model, batch=3, prompt_len=5, new_tokens=6)
        decoder.prepare(warmup=1)
        tokens = decoder.generate()
        last_logits = decoder.logits.clone()
        full = model(torch.cat([decoder.prompt, tokens], dim=1), use_cache=False).logits
    assert tokens.shape == (3, 7)
    assert torch.equal(tokens, full[:, 4:-1].argmax(-1))
    torch.testing.assert_close(last_logits, full[:, -2], rtol=1e-4, atol=1e-4)


def test_decoding_runs_again_from_a_reset_cache(bench):
    model = _tiny(bench, "int4")
    with torch.no_grad():
        decoder = bench.Decoder(model, batch=2, prompt_len=4, new_tokens=3)
        decoder.prepare(warmup=1)
        first = decoder.generate()
        prefill_s, decode_s = decoder.run()
        assert torch.equal(decoder.generate(), first) and prefill_s > 0 and decode_s > 0


# --------------------------------------------------------------------------- torch.compile on the CPU

def test_quantlinear_model_under_torch_compile_matches_eager():
    # In a fresh interpreter, so that no state an earlier test left in torch._dynamo can decide the result.
    root = Path(__file__).resolve().parents[2]
    code = "from tests.kernels.test_bench_model import compile_matches_eager as f; f(); print('compile ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compile ok" in done.stdout, done.stderr[-3000:]


def compile_matches_eager() -> None:
    # A real transformers model whose linears are packed int4 and ternary QuantLinear modules,
    # traced whole (fullgraph) through the custom op's fake implementation.
    from tests.tiny import tiny_model

    model = tiny_model("llama")
    compress.quantize(model, QuantConfig(method="int4", group_size=32, overrides={"down_proj": "ternary", "up_proj": "ternary"}))
    kinds = {m.fmt for m in model.modules() if type(m).__name__ == "QuantLinear"}
    assert kinds == {"int4", "ternary"}
    ids = torch.randint(0, 320, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(input_ids=ids, use_cache=False).logits, eager)


@pytest.mark.slow
def test_compiled_decode_step_has_no_graph_break_and_matches_eager(bench):
    model = _tiny(bench, "ternary+head")
    with torch.no_grad():
        eager = bench.Decoder(model, batch=2, prompt_len=5, new_tokens=4)
        eager.prepare(warmup=1)
        expected = eager.generate()
        compiled = bench.Decoder(model, batch=2, prompt_len=5, new_tokens=4, graphs="compile", compile_backend="aot_eager")
        compiled.prepare(warmup=1)
        assert compiled.check_against_eager() < 1e-5
        assert torch.equal(compiled.generate(), expected)
        compiled.prefill()  # room in the cache for the traced step
        explained = torch._dynamo.explain(compiled._decode_step)(compiled.ids)
    assert explained.graph_break_count == 0


# --------------------------------------------------------------------------- CUDA graphs

@pytest.mark.parametrize(
    "graphs, variant, batch",
    [("capture", "int4", 1), ("capture", "int4", 16), ("capture", "ternary+head", 1), ("capture", "ternary+head", 16),
     ("compile", "int4", 1), ("compile", "ternary+head", 16)],  # each compile takes tens of seconds: two cases
)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_decoding_matches_eager_with_triton_kernels(bench, graphs, variant, batch):
    from compress.kernels import dispatch

    dispatch.reset_fallbacks()
    model = _tiny(bench, variant, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        decoder = bench.Decoder(model, batch=batch, prompt_len=16, new_tokens=8, graphs=graphs)
        decoder.prepare(warmup=1)
        assert decoder.check_against_eager() < 2e-2
        prefill_s, decode_s = decoder.run()
    assert dispatch._FAILED == {}  # the Triton kernels ran, not the reference
    assert prefill_s > 0 and decode_s > 0


# --------------------------------------------------------------------------- benchmarks/gpu_all.sh

GPU_ALL = SCRIPT.with_name("gpu_all.sh")


@pytest.mark.parametrize(
    "args, message",
    [
        (["bogus"], "gpu_all.sh: unknown argument 'bogus'; stages are tune kernels model pytest compile, options --out DIR, "
                    "--budget MIN, --cap STAGE=SECONDS, --dry-run."),
        (["--cap", "tune"], "gpu_all.sh: --cap takes STAGE=SECONDS with a stage of tune kernels model pytest compile, got 'tune'."),
        (["--budget", "soon"], "gpu_all.sh: --budget takes whole minutes, got 'soon'."),
    ],
)
def test_gpu_all_refuses_bad_arguments_in_one_line(args, message, tmp_path):
    proc = subprocess.run(["bash", str(GPU_ALL), "--out", str(tmp_path), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == message


@pytest.mark.slow
def test_gpu_all_dry_run_checks_every_benchmark_command_line(tmp_path):
    # Without a GPU each script must get as far as its GPU check, so every flag gpu_all.sh
    # passes is one the script accepts.
    proc = subprocess.run(["bash", str(GPU_ALL), "--dry-run", "--out", str(tmp_path), "tune", "kernels", "model", "compile"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("ok: arguments parsed, stopped at the GPU check") == 6  # 3 tuning calls, kernels, model, compile
    assert (tmp_path / "gpu_all.log").read_text().count("ok: arguments parsed") == 6
