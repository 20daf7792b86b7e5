"""int4 g64 GPTQ on SmolLM2-135M calibrated on Shakespeare vs on the model's own generated text, both domains.

    OMP_NUM_THREADS=1 python benchmarks/calibration_source.py   # JSON: benchmarks/results/calibration_source.json

8,192 generated tokens (cached after the first run), half of the sequences for calibration;
8 x 256 held-out tokens of Shakespeare and of the unseen news text; the original in the same run.
"""
import copy
import json
import time
from pathlib import Path

import torch
import compress
from compress.data import TextConfig, load_text
from compress.eval import EvalConfig, evaluate
from compress.generated import GenerateConfig
from compress.io.atomic import write_json
from compress.quantization import QuantConfig

torch.manual_seed(0)
model, tok = compress.load_model("smollm2-135m")
cfg = TextConfig(seq_len=256, seed=0)
shakespeare = load_text("shakespeare", tok, cfg)
news = load_text("news", tok, cfg)
t0 = time.perf_counter()
generated = load_text("generated", tok, TextConfig(seq_len=256, seed=0, calibration_fraction=0.5), model=model,
                      generate=GenerateConfig(tokens=8192, progress=False))
print("generated text ready in", round(time.perf_counter() - t0), "s;", tuple(generated.calibration.shape), flush=True)
ec = EvalConfig(max_sequences=8, batch_size=4, progress=False)
out = {}
for name, data in [("original", None), ("shakespeare", shakespeare.calibration[:32]), ("generated", generated.calibration[:32])]:
    m = model if data is None else copy.deepcopy(model)
    if data is not None:
        t0 = time.perf_counter()
        compress.quantize(m, QuantConfig(method="int4", group_size=64, gptq=True, progress=False), data=data)
        secs = time.perf_counter() - t0
    row = {}
    for dom, d in [("shakespeare", shakespeare), ("news", news)]:
        r = evaluate(m, d, reference=None if data is None else model, config=ec)
        row[dom] = {"ppl": round(r.model.perplexity, 2), "kl": None if r.kl_to_reference is None else round(r.kl_to_reference, 4)}
    if data is not None:
        row["calibration"] = f"{data.shape[0]}x{data.shape[1]} tokens"; row["seconds"] = round(secs)
    out[name] = row
    print(name, json.dumps(row), flush=True)
write_json(Path(__file__).resolve().parent / "results" / "calibration_source.json", out)
