"""Quantise a model's linear layers to ternary (1.58-bit) weights and export it as GGUF for llama.cpp.

    python examples/ternary_to_gguf.py [MODEL] [OUTPUT_DIR]

Without training, ternary weights lose much of the model's quality: the `smallest`
recipe (compress-lm run --recipe smallest) trains them back with QAT distillation
first.  This script shows the two calls.
"""
import sys

import compress
from compress.io.exports import export

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
out = sys.argv[2] if len(sys.argv) > 2 else "out/ternary-gguf"

model, tokenizer = compress.load_model(name)
report = compress.quantize(model, "ternary")        # packed 2-bit codes + one scale per tensor
print(report.table())

written = export(model, tokenizer, out, "gguf")     # ternary as TQ2_0 / TQ1_0 blocks
print(written)
