"""Our int4 GPTQ beside llm-compressor's on SmolLM2-135M: same calibration tokens, one evaluation process, both domains.

Issue 18's peer comparison.  Calibration: the first ``--calib-seqs`` x
``--seq-len`` token ids of the default generated text, drawn exactly as
benchmarks/gptq_variants.py ``--calib-source generated`` draws them, saved to a
.pt file that every quantiser reads.  Each GPTQ runs in a fresh child process
that records its wall time and peak resident memory (ours: this script with
``--child-ours``; llm-compressor 0.14: benchmarks/peers/llmc_gptq.py in its own
venv, which is not a project dependency: ``make setup-peers``).  The parent
loads every result into this process (ours with ``compress.load``, the peer's
dense dequantised weights into a copy of the fp32 model) and evaluates each
row against the original on the same held-out Shakespeare and unseen news
sequences, per sequence, so rows can be compared pairwise.

Rows: original; our RTN (symmetric; and float zero points); our GPTQ as the
default recipe runs it (GPTAQ, float zero points; ``calibration_dtype``
"auto", so bfloat16 calibration on a CPU with bf16 units, float32 elsewhere:
the JSON records which); our GPTQ symmetric (the
W4A16 scheme); our GPTQ with integer zero points (the W4A16_ASYM scheme);
llm-compressor W4A16 and W4A16_ASYM (GPTQModifier, dampening 0.01, its default
static activation order, lm_head left out); on request (``--rows``) plain
symmetric GPTQ without GPTAQ (``sym-plain``), float32 calibration pinned
(``default-f32``, ``sym-f32``), bf16 forwards with float32 input products
(``default-bf16-f32-products``), bitsandbytes NF4 and HQQ.  The
JSON is rewritten after every row, so an interrupted run keeps what it
measured; ``--reuse`` takes children's results already in ``--work-dir``,
``--append`` adds rows to an earlier run's JSON, ``--from-json`` redoes its
table and PNG.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/peer_gptq.py --group-size 64    # -> results/peer_gptq_g64.{json,png}
    python benchmarks/peer_gptq.py --quick --output /tmp/peer_quick                 # smoke test, a few minutes
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "llmc_gptq.py"
PEER_VENV = Path(os.environ.get("COMPRESS_LM_CACHE", Path.home() / ".cache" / "compress-lm")) / "llmc-venv"
SETUP_HINT = ("make setup-peers (or: python3 -m venv ~/.cache/compress-lm/llmc-venv && "
              "~/.cache/compress-lm/llmc-venv/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1)")

# name -> (who, what).  Ours: QuantConfig fields beyond group_size; the peer's: its preset scheme.
ROWS: dict[str, tuple[str, dict]] = {
    "ours RTN symmetric": ("rtn", {}),
    "ours RTN float zero points": ("rtn", {"symmetric": False, "zero_point": "float"}),
    "ours GPTQ default (GPTAQ, float zero points)": ("ours", {"symmetric": False, "zero_point": "float"}),
    "ours GPTQ symmetric (GPTAQ)": ("ours", {}),
    "ours GPTQ integer zero points (GPTAQ)": ("ours", {"symmetric": False, "zero_point": "integer"}),
    "ours GPTQ symmetric, plain (no GPTAQ)": ("ours", {"gptaq": False}),
    "ours GPTQ default, bf16 calibration forwards": ("ours", {"symmetric": False, "zero_point": "float",
                                                              "calibration_dtype": "bfloat16"}),
    "ours GPTQ symmetric (GPTAQ), bf16 calibration forwards": ("ours", {"calibration_dtype": "bfloat16"}),
    "ours GPTQ default, float32 calibration": ("ours", {"symmetric": False, "zero_point": "float",
                                                        "calibration_dtype": "float32"}),
    "ours GPTQ symmetric (GPTAQ), float32 calibration": ("ours", {"calibration_dtype": "float32"}),
    "ours GPTQ default, bf16 forwards, float32 products": ("ours", {"symmetric": False, "zero_point": "float",
                                                                    "calibration_dtype": "bfloat16",
                                                                    "_bf16_products": False}),
    "ours GPTQ default, static groups, no code sweep (the default before b369e4d)": (
        "ours", {"symmetric": False, "zero_point": "float", "static_groups": True, "code_sweeps": 0}),
    "bitsandbytes NF4 (blocks of 64)": ("peer-rtn", {"make": "nf4"}),
    "HQQ 4-bit": ("peer-rtn", {"make": "hqq"}),
    "llm-compressor W4A16": ("llmc", {"scheme": "W4A16"}),
    "llm-compressor W4A16_ASYM": ("llmc", {"scheme": "W4A16_ASYM"}),
}
SHORT = {"rtn": "ours RTN symmetric", "rtn-float": "ours RTN float zero points", "default": "ours GPTQ default (GPTAQ, float zero points)",
         "sym": "ours GPTQ symmetric (GPTAQ)", "int": "ours GPTQ integer zero points (GPTAQ)",
         "sym-plain": "ours GPTQ symmetric, plain (no GPTAQ)",
         "default-bf16": "ours GPTQ default, bf16 calibration forwards",
         "sym-bf16": "ours GPTQ symmetric (GPTAQ), bf16 calibration forwards",
         "default-f32": "ours GPTQ default, float32 calibration",
         "sym-f32": "ours GPTQ symmetric (GPTAQ), float32 calibration",
         "default-bf16-f32-products": "ours GPTQ default, bf16 forwards, float32 products",
         "default-static": "ours GPTQ default, static groups, no code sweep (the default before b369e4d)",
         "nf4": "bitsandbytes NF4 (blocks of 64)", "hqq": "HQQ 4-bit",
         "llmc": "llm-compressor W4A16", "llmc-asym": "llm-compressor W4A16_ASYM"}
# Which of ours faces which of the peer's (same scheme), and the default against the best of the peer's.
PAIRS = [("ours GPTQ symmetric (GPTAQ)", "llm-compressor W4A16"),
         ("ours GPTQ integer zero points (GPTAQ)", "llm-compressor W4A16_ASYM"),
         ("ours GPTQ default (GPTAQ, float zero points)", "llm-compressor W4A16"),
         ("ours GPTQ default (GPTAQ, float zero points)", "llm-compressor W4A16_ASYM"),
         ("ours GPTQ default (GPTAQ, float zero points)", "ours RTN symmetric"),
         ("ours GPTQ default (GPTAQ, float zero points)", "ours RTN float zero points"),
         ("ours GPTQ default (GPTAQ, float zero points)", "bitsandbytes NF4 (blocks of 64)"),
         ("ours GPTQ default (GPTAQ, float zero points)", "HQQ 4-bit"),
         ("ours GPTQ symmetric, plain (no GPTAQ)", "llm-compressor W4A16")]


NOTES = ["Each GPTQ ran in a fresh child process; 'seconds' times the quantise call only, "
         "'peak_rss_mib' is the child's own resident high-water mark (VmHWM) from just before the quantise call "
         "to its end (interpreter, libraries, model and quantiser state), 'peak_over_loaded_mib' that peak "
         "above its RSS after loading the model. wait4's ru_maxrss is not used: Linux carries the parent's "
         "resident size at the fork across exec.",
         "llm-compressor loads the model with transformers and reads the same token ids from a .pt file; its "
         "dequantised weights are loaded into a copy of the fp32 model here.",
         "The CPU was shared with other jobs: wall times are indicative, not a clean benchmark; 'cpu_seconds' "
         "(the child's user + system time, loading and saving included) is less sensitive to the sharing."]


class BenchError(Exception):
    """Bad input to this script: one sentence, exit 2."""


# --------------------------------------------------------------------------- memory

def _status_mib(field: str) -> Optional[float]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_child(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` to completion (output to ``log``); its exit code, wall time and CPU time.

    Its wait4 ``ru_maxrss`` is kept but is not the child's own peak: Linux carries the
    high-water mark of the forked copy of this process across exec, so it is at least
    this process's resident size at the fork.  The children read their own VmHWM.
    """
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "process_seconds": time.perf_counter() - start,
            "ru_maxrss_mib_includes_parent": usage.ru_maxrss / 1024, "cpu_seconds": usage.ru_utime + usage.ru_stime}


# --------------------------------------------------------------------------- our GPTQ in a child

def child_ours(args: argparse.Namespace) -> int:
    rss_start = _status_mib("VmRSS")
    import torch

    import compress
    import compress.quantization.calibrate as calibrate
    from compress.machine import reset_peak_memory
    from compress.quantization import QuantConfig

    rss_runtime = _status_mib("VmRSS")
    fields = json.loads(args.fields)
    if "_bf16_products" in fields:  # a module knob, not a config field
        calibrate.BF16_PRODUCTS = fields.pop("_bf16_products")
    model, tokenizer = compress.load_model(args.model)
    ids = torch.load(args.calib)
    cfg = QuantConfig(method="int4", gptq=True, group_size=args.group_size, damp=args.damp,
                      calibration_sequences=len(ids), progress=False, **fields)
    rss_loaded = _status_mib("VmRSS")
    peak_loading = _status_mib("VmHWM")
    peak_reset = reset_peak_memory()
    start = time.perf_counter()
    report = compress.quantize(model, cfg, data=ids)
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    out = Path(args.child_ours)
    compress.save(model, out / "model", tokenizer, overwrite=True)
    run = {"library": "compress-lm", "config": cfg.label(), "fields": fields, "damp": cfg.damp, "act_order": cfg.act_order,
           "calibration_dtype": str(cfg.calibration_torch_dtype(next(model.parameters()).device)).removeprefix("torch."),
           "bf16_products": calibrate.BF16_PRODUCTS,
           "gptaq": cfg.gptaq, "clip_search": cfg.clip_search, "calibration_sequences": int(ids.shape[0]),
           "seq_len": int(ids.shape[1]), "seconds": seconds, "threads": torch.get_num_threads(),
           "bits_per_weight": report.bits_per_weight,
           "rss_start_mib": rss_start, "rss_runtime_mib": rss_runtime, "rss_loaded_mib": rss_loaded,
           "peak_rss_mib": peak, "peak_reset_worked": peak_reset, "peak_while_loading_mib": peak_loading,
           "peak_over_loaded_mib": (peak - rss_loaded) if peak_reset and peak and rss_loaded else None,
           "versions": {"torch": torch.__version__}, "pid": os.getpid()}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(json.dumps(run, indent=2))
    return 0


# --------------------------------------------------------------------------- arguments

def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-seqs", type=int, default=8)
    ap.add_argument("--calib-seqs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--generate-tokens", type=int, default=32768, help="generated tokens (cached) the calibration is drawn from")
    ap.add_argument("--rows", default=",".join(SHORT),
                    help=f"comma-separated rows to run, of: {', '.join(SHORT)} (the original is always measured)")
    ap.add_argument("--peer-python", default=str(PEER_VENV / "bin" / "python"),
                    help="the python of the venv where llmcompressor 0.14 is installed")
    ap.add_argument("--work-dir", default=None, help="where the children write their results (default: a folder in the cache)")
    ap.add_argument("--reuse", action="store_true", help="take a child's result already in --work-dir for the same inputs")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 2 calibration and 2 evaluation sequences of 64 tokens")
    ap.add_argument("--output", default=None, help="path stem of the .json and .png (default results/peer_gptq_gG)")
    ap.add_argument("--append", action="store_true",
                    help="add the rows to --output's JSON of an earlier run with the same settings (the original is "
                         "measured again and must match it)")
    ap.add_argument("--from-json", metavar="JSON", help="only rewrite the table and PNG of an earlier run's JSON")
    ap.add_argument("--child-ours", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--calib", help=argparse.SUPPRESS)
    ap.add_argument("--fields", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.calib_seqs, args.eval_seqs, args.seq_len = 2, 2, 64
    for name in ("group_size", "seq_len", "eval_seqs", "calib_seqs", "batch_size", "generate_tokens"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    if not 0 <= args.damp < 1:
        raise BenchError(f"--damp must be in [0, 1) (a fraction of the Hessian's mean diagonal), got {args.damp}.")
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in SHORT]
    if unknown or not wanted:
        raise BenchError(f"--rows {args.rows!r} names {', '.join(unknown) or 'nothing'}; choose from {', '.join(SHORT)}.")
    args.row_names = [SHORT[r] for r in wanted]
    if args.output is None:
        args.output = str(RESULTS_DIR / f"peer_gptq_g{args.group_size}")
    return args


def check_peer(python: str) -> str:
    """The peer venv's llmcompressor version; one sentence naming the setup command when it is missing."""
    if not Path(python).is_file():
        raise BenchError(f"llm-compressor's venv is missing ({python} does not exist); create it with {SETUP_HINT}, "
                         "or leave the llmc rows out with --rows.")
    probe = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('llmcompressor'))"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise BenchError(f"{python} has no llmcompressor installed; install it with {SETUP_HINT}, "
                         "or leave the llmc rows out with --rows.")
    return probe.stdout.strip()


# --------------------------------------------------------------------------- the run

def _fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def calibration_ids(model, tokenizer, args: argparse.Namespace):
    """The first --calib-seqs sequences of the generated text, as gptq_variants.py --calib-source generated draws them."""
    import torch

    import compress
    from compress.data import TextConfig
    from compress.generated import GenerateConfig

    gen = compress.load_text("generated", tokenizer,
                             TextConfig(seq_len=args.seq_len, eval_fraction=0.01, calibration_fraction=0.5),
                             model=model, generate=GenerateConfig(tokens=args.generate_tokens))
    calibration = torch.cat([gen.calibration, gen.train])
    if len(calibration) < args.calib_seqs:
        raise BenchError(f"the generated text holds {len(calibration)} sequences of {args.seq_len} tokens, fewer than "
                         f"--calib-seqs {args.calib_seqs}; raise --generate-tokens.")
    return calibration[: args.calib_seqs].clone()


def quantise_child(name: str, args: argparse.Namespace, work: Path, calib_path: Path, model_dir: Path, key: str) -> dict:
    """Run one GPTQ row in a fresh process (or reuse its result); its run.json plus the child's process figures."""
    who, spec = ROWS[name]
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    out = work / f"{slug}-{key}"
    if args.reuse and (out / "child.json").is_file():
        print(f"[child] {name}: reusing {out}", flush=True)
        return json.loads((out / "child.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    if who == "ours":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-ours", str(out), "--model", args.model,
               "--calib", str(calib_path), "--group-size", str(args.group_size), "--damp", str(args.damp),
               "--fields", json.dumps(spec)]
    else:
        cmd = [args.peer_python, str(PEER_SCRIPT), "--model-dir", str(model_dir), "--calib", str(calib_path),
               "--scheme", spec["scheme"], "--group-size", str(args.group_size), "--damp", str(args.damp), "--out", str(out)]
    print(f"[child] {name}: {' '.join(cmd)}", flush=True)
    proc = run_child(cmd, out / "log.txt")
    if proc["returncode"] != 0:
        last = (out / "log.txt").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        return {**proc, "error": f"exit {proc['returncode']}: {last[0].strip()[:400]}", "log": str(out / "log.txt")}
    child = {**json.loads((out / "run.json").read_text()), **proc, "dir": str(out)}
    (out / "child.json").write_text(json.dumps(child, indent=2) + "\n")
    return child


def load_row(name: str, child: dict, fp32_model):
    """The quantised model of a child's result, in this process."""
    import torch
    from safetensors.torch import load_file

    import compress

    if ROWS[name][0] == "ours":
        loaded, _ = compress.load(Path(child["dir"]) / "model")
        return loaded
    m = copy.deepcopy(fp32_model)
    weights = load_file(str(Path(child["dir"]) / "weights.safetensors"))
    with torch.no_grad():
        for key, w in weights.items():
            module = m.get_submodule(key.removesuffix(".weight"))
            if module.weight.shape != w.shape:
                raise RuntimeError(f"{key}: the peer wrote {tuple(w.shape)}, the model has {tuple(module.weight.shape)}")
            module.weight.copy_(w)
    child["modules_loaded"] = len(weights)
    return m


def summarise(result: dict, qq) -> None:
    """Paired comparisons over sequences (KL and NLL), for every pair of rows that both finished."""
    rows = result["rows"]
    comparisons = {}
    for a, b in PAIRS:
        if "domains" not in rows.get(a, {}) or "domains" not in rows.get(b, {}):
            continue
        for domain in rows[a]["domains"]:
            ra, rb = rows[a]["domains"][domain], rows[b]["domains"][domain]
            kl = qq.paired(ra["per_sequence_kl"], rb["per_sequence_kl"])
            nll = qq.paired(ra["per_sequence_nll"], rb["per_sequence_nll"])
            n = len(ra["per_sequence_kl"])
            comparisons[f"{domain}: {a} vs {b}"] = {
                "kl": kl, "nll": nll, "sequences": n,
                "a_lower_kl_on": round(kl["fraction_a_lower"] * n), "a_lower_nll_on": round(nll["fraction_a_lower"] * n)}
    result["paired"] = comparisons


def _ordered(rows: dict) -> list:
    """Rows in the order of ROWS (the run may take them in another), the original first."""
    order = ["original", *ROWS]
    return sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def table(result: dict) -> str:
    domains = result["domains"]
    lines = [f"| row (g{result['group_size']}) | bits/weight | " + " | ".join(f"{d} ppl (x original) | {d} KL | {d} top-1" for d in domains)
             + " | quantise s | process CPU s | peak RSS MiB |",
             "| --- | ---: |" + " ---: | ---: | ---: |" * len(domains) + " ---: | ---: | ---: |"]
    for name, row in _ordered(result["rows"]):
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:200]} |")
            continue
        cells = [f"{row['domains'][d]['perplexity']:.2f} ({row['domains'][d]['ratio']:.3f}x) | "
                 f"{row['domains'][d]['kl_to_fp32']:.4f} | {row['domains'][d]['top1_agreement']:.3f}" for d in domains]
        q = row.get("quantise", {})
        secs = f"{q['seconds']:.0f}" if "seconds" in q else "-"
        peak = f"{q['peak_rss_mib']:.0f}" if q.get("peak_rss_mib") else "-"
        bits = row.get("bits_per_weight") or q.get("bits_per_weight")
        cpu = f"{q['cpu_seconds']:.0f}" if "cpu_seconds" in q else "-"
        lines.append(f"| {name} | {f'{bits:.2f}' if bits else '-'} | " + " | ".join(cells) + f" | {secs} | {cpu} | {peak} |")
    for label, c in result.get("paired", {}).items():
        lines.append(f"- {label}: lower KL on {c['a_lower_kl_on']}/{c['sequences']} sequences "
                     f"(mean diff {c['kl']['mean_diff']:+.4f}, 95% CI {c['kl']['ci95'][0]:+.4f}..{c['kl']['ci95'][1]:+.4f})")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in _ordered(result["rows"]) if "domains" in v and k != "original"}
    domains = result["domains"]
    fig, axes = plt.subplots(1, len(domains) + 1, figsize=(5.2 * (len(domains) + 1), 4.8))
    names = list(rows)
    colours = ["tab:red" if n.startswith("llm-compressor") else "tab:blue" if "GPTQ" in n else "tab:gray" for n in names]
    for ax, domain in zip(axes, domains):
        ax.barh(range(len(names)), [rows[n]["domains"][domain]["ratio"] for n in names], color=colours)
        ax.axvline(1.10, color="k", ls="--", lw=0.8, label="target 1.10x")
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names), fontsize=7)
        ax.set_xlabel(f"{domain} perplexity / original's")
        ax.set_xlim(left=1.0)
        ax.legend(fontsize=7)
        ax.invert_yaxis()
    ax = axes[-1]
    for n, c in zip(names, colours):
        q = rows[n].get("quantise", {})
        if "seconds" in q and q.get("peak_rss_mib"):
            ax.scatter(q["seconds"], q["peak_rss_mib"], color=c)
            ax.annotate(n.replace("llm-compressor", "llmc").replace(" (GPTAQ", "\n(GPTAQ"), (q["seconds"], q["peak_rss_mib"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("GPTQ wall time, s (CPU shared with other jobs)")
    ax.set_ylabel("peak RSS of its process while quantising, MiB")
    fig.suptitle(f"{result['model']} int4 g{result['group_size']}: ours vs llm-compressor {result.get('peer_version', '?')}, "
                 f"{result['calibration_sequences']} x {result['seq_len']} generated calibration tokens, "
                 f"{result['eval_sequences']} x {result['seq_len']} held-out per domain; {result['machine']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(result: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = stem.with_name(f".{stem.name}.json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, stem.with_suffix(".json"))


def run(args: argparse.Namespace, argv: Optional[list[str]]) -> int:
    peer_rows = [n for n in args.row_names if ROWS[n][0] == "llmc"]
    peer_version = check_peer(args.peer_python) if peer_rows else None

    import torch

    import compress
    from compress.data import UNSEEN_TEXT, TextConfig
    from compress.models import BUILTINS, cache_dir
    from compress.quantization import QuantConfig

    spec = importlib_bench("quant_quality")
    model, tokenizer = compress.load_model(args.model)
    model.eval()
    model_dir = cache_dir() / BUILTINS[args.model].name if args.model in BUILTINS else Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise BenchError(f"{model_dir} is not a Hugging Face model directory the peer can load; give a built-in "
                         "model name or a directory with config.json.")
    splits = compress.load_text(None, tokenizer, TextConfig(seq_len=args.seq_len))
    news = compress.load_text(UNSEEN_TEXT, tokenizer, TextConfig(seq_len=args.seq_len))
    held = {"shakespeare": splits.eval[: args.eval_seqs], UNSEEN_TEXT: news.eval[: args.eval_seqs]}
    calib = calibration_ids(model, tokenizer, args)
    work = Path(args.work_dir) if args.work_dir else cache_dir() / "peer_gptq"
    work.mkdir(parents=True, exist_ok=True)
    key = _fingerprint(calib.numpy().tobytes(), args.model, args.group_size, args.damp)
    calib_path = work / f"calib-{key}.pt"
    torch.save(calib, calib_path)
    stem = Path(args.output)
    result: dict[str, Any] = {
        "benchmark": "peer_gptq",
        "command": "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/peer_gptq.py "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"CPU, {os.cpu_count()} cores shared with other jobs (load {os.getloadavg()[0]:.1f} at start), "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "processor": platform.processor() or platform.machine(),
        "model": args.model, "group_size": args.group_size, "seq_len": args.seq_len, "eval_sequences": args.eval_seqs,
        "calibration": f"first {len(calib)} x {args.seq_len} tokens of the generated default text "
                       f"({args.generate_tokens} tokens, as gptq_variants.py --calib-source generated)",
        "calibration_sequences": len(calib), "calibration_sha": key, "peer_version": peer_version,
        "versions": {"torch": torch.__version__},
        "notes": NOTES,
        "domains": list(held), "rows": {}}

    def evaluate(name: str, m) -> dict:
        m.eval()
        out = {}
        for domain, ids in held.items():
            r = spec.compare_causal(model, {name: m}, ids, args.batch_size)
            out[domain] = {"fp32_perplexity": r["fp32"]["perplexity"], "perplexity": r[name]["perplexity"],
                           "ratio": r[name]["perplexity"] / r["fp32"]["perplexity"],
                           **{k: r[name][k] for k in ("kl_to_fp32", "top1_agreement", "per_sequence_kl", "per_sequence_nll")}}
        return out

    result["rows"]["original"] = {"domains": evaluate("original", model)}
    if args.append:
        result = _merge_earlier(result, stem)
    _write(result, stem)
    for name in args.row_names:
        who, fields = ROWS[name]
        print(f"[row] {name}", flush=True)
        if who == "peer-rtn":
            m = copy.deepcopy(model)
            targets = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and not n.endswith("lm_head")]
            make = spec.nf4_linear if fields["make"] == "nf4" else (lambda lin: spec.hqq_linear(lin, args.group_size))
            t = time.perf_counter()
            try:
                stored = spec.replace_with(m, targets, make)
            except Exception as exc:  # a peer library that fails on this machine is a result, not a crash
                result["rows"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                _write(result, stem)
                continue
            row = {"how": "benchmarks/quant_quality.py " + ("nf4_linear (bitsandbytes defaults)" if fields["make"] == "nf4"
                                                             else f"hqq_linear, group {args.group_size}"),
                   "bits_per_weight": stored["bits_per_weight"], "quantise": {"in_process_seconds": time.perf_counter() - t}}
        elif who == "rtn":
            m = copy.deepcopy(model)
            t = time.perf_counter()
            report = compress.quantize(m, QuantConfig(method="int4", group_size=args.group_size, progress=False, **fields))
            row = {"how": f"compress.quantize {report.config}", "bits_per_weight": report.bits_per_weight,
                   "quantise": {"in_process_seconds": time.perf_counter() - t}}
        else:
            child = quantise_child(name, args, work, calib_path, model_dir, key)
            if "error" in child:
                result["rows"][name] = {"error": child["error"], "quantise": child}
                print(f"[row] {name} failed: {child['error']}", flush=True)
                _write(result, stem)
                continue
            m = load_row(name, child, model)
            row = {"how": child.get("config") or f"llm-compressor {child.get('scheme')} {child.get('weights')}",
                   "quantise": child}
        row["domains"] = evaluate(name, m)
        result["rows"][name] = row
        d = row["domains"]
        print(f"[result] {name}: " + "; ".join(f"{k} {v['perplexity']:.2f} ({v['ratio']:.3f}x, KL {v['kl_to_fp32']:.4f})"
                                             for k, v in d.items()), flush=True)
        summarise(result, spec)
        _write(result, stem)
        del m
    print(table(result))
    plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return 0


def _merge_earlier(result: dict, stem: Path) -> dict:
    """``result`` (the original just measured) joined to the rows of the earlier run at ``stem``."""
    path = stem.with_suffix(".json")
    if not path.is_file():
        raise BenchError(f"--append needs an earlier run at {path}; run without --append first.")
    earlier = json.loads(path.read_text())
    for key in ("model", "group_size", "seq_len", "eval_sequences", "calibration_sha"):
        if earlier.get(key) != result.get(key):
            raise BenchError(f"--append: {path} was measured with {key} {earlier.get(key)!r}, this run with "
                             f"{result.get(key)!r}; use the same settings or another --output.")
    for domain, now in result["rows"]["original"]["domains"].items():
        then = earlier["rows"]["original"]["domains"][domain]
        if abs(now["perplexity"] - then["perplexity"]) > 1e-6 * then["perplexity"]:
            raise BenchError(f"--append: the original's {domain} perplexity is {now['perplexity']:.6f} here and "
                             f"{then['perplexity']:.6f} in {path}; the held-out text differs, so rows would not compare.")
    earlier.setdefault("appended", []).append({"command": result["command"], "date": result["date"],
                                               "machine": result["machine"]})
    return earlier


def replot(path: Path) -> int:
    if not path.is_file():
        raise BenchError(f"--from-json {path} does not exist; give the .json of an earlier peer_gptq run.")
    result = json.loads(path.read_text())
    for row in result["rows"].values():  # runs before the field's rename
        q = row.get("quantise", {})
        if "process_peak_rss_mib" in q:
            q["ru_maxrss_mib_includes_parent"] = q.pop("process_peak_rss_mib")
    result["notes"] = NOTES
    summarise(result, importlib_bench("quant_quality"))
    _write(result, path.with_suffix(""))
    print(table(result))
    plot(result, path.with_suffix(".png"))
    return 0


def importlib_bench(name: str):
    import importlib.util

    s = importlib.util.spec_from_file_location(f"_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(s)
    s.loader.exec_module(module)
    return module


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse_args(argv)
        if args.child_ours:
            return child_ours(args)
        if args.from_json:
            return replot(Path(args.from_json))
        return run(args, argv)
    except BenchError as exc:
        print(f"peer_gptq: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
