"""Evaluate a model on held-out text, against a reference.

    python examples/evaluate_model.py [MODEL] [REFERENCE]

MODEL and REFERENCE are built-in names, HF directories or .gguf files
(default: smollm2-135m against itself, which gives KL 0 and agreement 1).
"""
import sys

import compress
from compress.eval import EvalConfig

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
ref_name = sys.argv[2] if len(sys.argv) > 2 else name

model, tokenizer = compress.load_model(name)
reference, _ = compress.load_model(ref_name)
text = compress.load_text(None, tokenizer, compress.TextConfig(seq_len=256))
report = compress.evaluate(model, text, reference, EvalConfig(max_sequences=8), name=name, reference_name=ref_name)
print(report.table())
