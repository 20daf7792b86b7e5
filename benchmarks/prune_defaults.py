"""Adapt-Pruner settings for a 20% prune of SmolLM2-135M: time, and perplexity / KL on both domains.

    python benchmarks/prune_defaults.py                    # every setting
    python benchmarks/prune_defaults.py "default"          # settings whose name contains this

No training after pruning; calibration on the built-in Shakespeare; 8 x 256
held-out tokens of Shakespeare and of the unseen news text; the original
measured in the same run.  Rows go to benchmarks/results/prune_defaults.json
(merged with the rows already there, so settings can run one at a time).
"""
from __future__ import annotations

import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

SETTINGS = {
    "recipe stage (step 0.1, 16 windows, batch 8, round 64)": dict(step=0.1, calib_samples=16, batch_size=8, round_to=64),
    "step 0.05, 32 windows, batch 8, round 8": dict(step=0.05, calib_samples=32, batch_size=8, round_to=8),
    "default (step 0.1, 16 windows, batch 8, round 8)": dict(step=0.1, calib_samples=16, batch_size=8, round_to=8),
    "released scripts (step 0.02, 128 windows, batch 16, round 8)": dict(step=0.02, calib_samples=128, batch_size=16, round_to=8),
}
OUT = Path(__file__).resolve().parent / "results" / "prune_defaults.json"


def main(argv: list[str]) -> int:
    import compress
    from compress.data import TextConfig, load_text
    from compress.eval import EvalConfig, evaluate
    from compress.io.atomic import write_json
    from compress.pruning import PruneConfig

    torch.manual_seed(0)
    model, tok = compress.load_model("smollm2-135m")
    text = load_text("shakespeare", tok, TextConfig(seq_len=256, seed=0))
    news = load_text("news", tok, TextConfig(seq_len=256, seed=0))
    ec = EvalConfig(max_sequences=8, batch_size=4, progress=False)
    domains = {"shakespeare": text, "news": news}
    rows = json.loads(OUT.read_text())["rows"] if OUT.is_file() else {}
    original = {d: round(evaluate(model, data, config=ec).model.perplexity, 2) for d, data in domains.items()}
    for name, options in SETTINGS.items():
        if argv and not any(a in name for a in argv):
            continue
        student = copy.deepcopy(model)
        t0 = time.perf_counter()
        report = compress.prune(student, PruneConfig(sparsity=0.2, calib_seq_len=64, progress=False, **options), data=text)
        row = {"seconds": round(time.perf_counter() - t0, 1), "achieved_sparsity": report.achieved_sparsity, "options": options}
        for d, data in domains.items():
            r = evaluate(student, data, reference=model, config=ec)
            row[d] = {"perplexity": round(r.model.perplexity, 2), "kl": round(r.kl_to_reference, 4)}
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    write_json(OUT, {"model": "smollm2-135m", "sparsity": 0.2, "original_perplexity": original,
                     "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                     "rows": rows})
    print(f"written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
