"""Prune a model with Adapt-Pruner, save it, and compare it with the original on held-out text.

    python examples/prune_model.py [MODEL] [OUTPUT_DIR] [SPARSITY]

MODEL is a built-in name, an HF directory or a .gguf file (default smollm2-135m).
Calibration uses the built-in text's calibration split; the evaluation its held-out split.
"""
import sys

import compress
from compress.eval import EvalConfig
from compress.pruning import PruneConfig

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
out = sys.argv[2] if len(sys.argv) > 2 else "out/pruned"
sparsity = float(sys.argv[3]) if len(sys.argv) > 3 else 0.2

model, tokenizer = compress.load_model(name)
original, _ = compress.load_model(name)
text = compress.load_text(None, tokenizer, compress.TextConfig(seq_len=256))

# Widths stay multiples of 64, so int4 groups of 64 (or ternary's 16-input words) tile every layer later.
report = compress.prune(model, PruneConfig(sparsity=sparsity, round_to=64, step=0.1, calib_samples=16), data=text)
print(report.table())
print(f"checkpoint written to {compress.save(model, out, tokenizer)}")   # compress.load(out) reopens it

evaluation = compress.evaluate(model, text, reference=original, config=EvalConfig(max_sequences=8))
print(evaluation.table())
