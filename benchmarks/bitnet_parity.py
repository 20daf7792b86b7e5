"""Does a bitnet export compute what compress-lm evaluated?  SmolLM2-135M in stock transformers.

SmolLM2-135M (fp32) is quantised ternary per-tensor with int8 activations
(``--a8``, round-to-nearest, no recovery) and exported as ``bitnet``;
transformers' own ``BitLinear`` loads the export (eager: TORCHDYNAMO_DISABLE=1,
float32) and its logits are compared with compress-lm's forward on the same
ids: one held-out window of each text (Shakespeare, the calibration domain;
news, unseen).  The previous rescale order ``acc * (1/inv) * gamma`` is
measured in the same run, by swapping it into the reference matmul.  Then the
same model with 16-bit activations is exported, and the note the export
prints (the gap it measures) is recorded.

    python benchmarks/bitnet_parity.py     # JSON: benchmarks/results/bitnet_parity.json
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # BitLinear's torch.compile: the same ops, without a CPU compile

import torch  # noqa: E402


def _gap(a: torch.Tensor, b: torch.Tensor) -> dict:
    return {"rel_norm": float((a - b).norm() / b.norm()), "max_abs": float((a - b).abs().max()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def main(argv=None) -> int:
    import compress
    import compress.kernels.reference as ref
    from compress.data import TextConfig
    from compress.io.exports import export
    from compress.io.exports.common import quantized_modules
    from compress.quantization import QuantConfig
    from transformers import AutoModelForCausalLM

    seq_len = int(argv[0]) if argv else 128
    start = time.time()
    model, tok = compress.load_model("smollm2-135m")
    compress.quantize(model, QuantConfig(method="ternary", activations="a8", per_channel=False, progress=False))
    cfg = TextConfig(seq_len=seq_len, seed=0)
    texts = ["shakespeare", "news"]
    ids = torch.cat([compress.load_text(t, tok, cfg).eval[:1] for t in texts])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        export(model, tok, f"{d}/bn", "bitnet")
        stock = AutoModelForCausalLM.from_pretrained(f"{d}/bn", dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = stock(input_ids=ids).logits
            ours = model(input_ids=ids).logits
            now = ref.a8_rescale
            ref.a8_rescale = lambda acc, inv, ws: acc.float() * (1.0 / inv.float())[:, None] * (1.0 / ws.double()).float()[None, :]
            try:
                old = model(input_ids=ids).logits
            finally:
                ref.a8_rescale = now
        for i, text in enumerate(texts):
            rows.append({"text": text, "rescale": "acc / (weight_scale * inv)", **_gap(ours[i], theirs[i])})
            rows.append({"text": text, "rescale": "acc * (1/inv) * gamma (before)", **_gap(old[i], theirs[i])})
        for m in quantized_modules(model).values():
            m.activations = "a16"
        a16 = export(model, tok, f"{d}/bn16", "bitnet")
    result = {"model": "smollm2-135m ternary per-tensor a8 (RTN)", "tokens_per_text": seq_len, "rows": rows,
              "a16_note": [n for n in a16.notes if "16-bit" in n], "a16_logit_gap": a16.details.get("a16_logit_gap"),
              "transformers": __import__("transformers").__version__, "torch": torch.__version__,
              "seconds": round(time.time() - start)}
    for r in rows:
        print(f"{r['text']:12s} {r['rescale']:34s} rel norm {r['rel_norm']:.2e}  max |diff| {r['max_abs']:.3g}  "
              f"top-1 {r['top1_agreement']:.4f}")
    print("a16 export:", *result["a16_note"])
    out = Path(__file__).parent / "results" / "bitnet_parity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
