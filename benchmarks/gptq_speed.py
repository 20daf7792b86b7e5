"""GPTQ's calibration speed on SmolLM2-135M: this checkout against another one, one child process after the other.

Each child quantises the model with ``compress.quantize`` (int4, GPTQ with
GPTAQ unless ``--plain``, float zero points unless ``--symmetric``) on the same
``--calib-seqs`` x 256 generated tokens (drawn as ``gptq_variants.py
--calib-source generated`` draws them), on one thread, and reports its wall
and CPU time, its peak RSS, the linear layers' work per calibration batch and
layer (in units of a 576 x 576 product; one run of a SmolLM2 layer is 10.7)
and a hash of the packed weights, so a speed-up that changes the codes shows.
``--against DIR`` runs the same child with ``DIR`` (a checkout or worktree of
another commit) first on ``PYTHONPATH``::

    git worktree add --detach /tmp/before b2509a6
    python benchmarks/gptq_speed.py --against /tmp/before --label-against b2509a6

Writes ``benchmarks/results/gptq_speed.{json,png}`` (``--output`` stem).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def child(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(args)
    finally:
        torch.set_num_threads(threads)


def _measure(args: argparse.Namespace) -> int:
    import resource
    import time

    import torch
    from torch import nn

    import compress
    from compress.quantization import QuantConfig

    model, _ = compress.load_model(args.model)
    ids = torch.load(args.calib)
    work = [0]
    real_forward = nn.Linear.forward

    def counting(self, x):
        work[0] += x.numel() // x.shape[-1] * self.in_features * self.out_features
        return real_forward(self, x)

    nn.Linear.forward = counting
    try:
        cfg = QuantConfig(method="int4", gptq=True, gptaq=not args.plain, group_size=args.group_size,
                          symmetric=args.symmetric, **({} if args.symmetric else {"zero_point": "float"}),
                          calibration_sequences=len(ids), progress=False)
        cpu, wall = time.process_time(), time.perf_counter()
        compress.quantize(model, cfg, data=ids)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        nn.Linear.forward = real_forward
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    layers = model.config.num_hidden_layers
    batches = -(-len(ids) // cfg.calibration_batch_size)
    unit = 576 * 576 * ids.shape[1] * cfg.calibration_batch_size
    print(json.dumps({"compress": str(Path(compress.__file__).parent.parent), "quantise_seconds": wall,
                      "quantise_cpu_seconds": cpu,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "linear_units_per_batch_layer": work[0] / (layers * batches * unit),
                      "packed_weights_sha256": digest.hexdigest()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib-seqs", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--plain", action="store_true", help="plain GPTQ (no GPTAQ)")
    ap.add_argument("--symmetric", action="store_true", help="symmetric int4 (default: float zero points)")
    ap.add_argument("--against", type=Path, help="another checkout, run first with the same settings")
    ap.add_argument("--label-against", default="before")
    ap.add_argument("--output", type=Path, default=RESULTS / "gptq_speed")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--calib", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.against is not None and not (args.against / "compress" / "__init__.py").is_file():
        print(f"gptq_speed: --against {args.against} holds no compress package; give a checkout of compress-lm.",
              file=sys.stderr)
        return 2

    import compress

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peer_gptq import calibration_ids

    model, tokenizer = compress.load_model(args.model)
    calib = calibration_ids(model, tokenizer, argparse.Namespace(seq_len=256, generate_tokens=32768,
                                                                 calib_seqs=args.calib_seqs))
    del model
    import torch

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        calib_path = Path(tmp) / "calib.pt"
        torch.save(calib, calib_path)
        trees = ([(args.label_against, args.against)] if args.against else []) + [("this checkout", ROOT)]
        for label, tree in trees:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--calib", str(calib_path),
                   "--model", args.model, "--group-size", str(args.group_size)]
            cmd += ["--plain"] * args.plain + ["--symmetric"] * args.symmetric
            env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
            print(f"[run] {label}: {tree}", flush=True)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"[result] {label}: {runs[label]}", flush=True)
    result = {"benchmark": "gptq_speed", "command": "python benchmarks/gptq_speed.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"CPU, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end, one thread per child",
              "model": args.model, "calibration_tokens": list(calib.shape), "group_size": args.group_size,
              "gptaq": not args.plain, "symmetric": args.symmetric, "runs": runs}
    if len(runs) == 2:
        (_, a), (_, b) = runs.items()
        result["time_ratio"] = b["quantise_seconds"] / a["quantise_seconds"]
        result["same_codes"] = a["packed_weights_sha256"] == b["packed_weights_sha256"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.output.with_name(f".{args.output.name}.json.tmp")
    tmp_json.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_json, args.output.with_suffix(".json"))
    _plot(result, args.output.with_suffix(".png"))
    print(f"wrote {args.output.with_suffix('.json')} and .png")
    return 0


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["runs"])
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, key, title in zip(axes, ("quantise_seconds", "peak_rss_mib", "linear_units_per_batch_layer"),
                              ("quantise s", "peak RSS MiB", "linear work / batch-layer (576^2 units)")):
        values = [result["runs"][label][key] for label in labels]
        ax.bar(labels, values, color=["#999999", "#1f77b4"][-len(labels):])
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"{result['model']} int4 g{result['group_size']} {'GPTAQ' if result['gptaq'] else 'GPTQ'}, "
                 f"{result['calibration_tokens'][0]} x {result['calibration_tokens'][1]} tokens; {result['machine']}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
