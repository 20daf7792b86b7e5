"""SmolLM2-135M: exports shrink the checkpoint as the README says, and a quantised checkpoint round-trips.

    pytest -m slow -s tests/io/test_export_smollm2.py     # prints the sizes

The README's full table (every format, GGUF included) comes from benchmarks/export_sizes.py.
"""
import copy

import pytest
import torch

import compress
from compress.io.exports import export
from compress.quantization import QuantConfig, quantize

pytestmark = pytest.mark.slow


def _quantised(model, **cfg):
    q = copy.deepcopy(model)
    quantize(q, QuantConfig(progress=False, **cfg))
    return q


def test_smollm2_export_sizes_and_native_round_trip(tmp_path):
    model, tokenizer = compress.load_model("smollm2-135m")
    ternary = _quantised(model, method="ternary")
    int4 = _quantised(model, method="int4", group_size=128).half()  # 576 = 4.5 x 128: a partial last group
    fp16 = model.half()

    # quantise -> save -> load gives identical logits (float32, so the rotary buffers match too)
    export(ternary, tokenizer, tmp_path / "native", "native")
    ids = tokenizer("To be, or not to be", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(compress.load(tmp_path / "native").model(input_ids=ids).logits, ternary(input_ids=ids).logits)
    ternary = ternary.half()  # embeddings and norms in 16-bit; packed scales stay float16

    reports = {
        "fp16 hf": export(fp16, tokenizer, tmp_path / "hf", "hf"),
        "ternary bitnet": export(ternary, tokenizer, tmp_path / "bitnet", "bitnet"),
        "int4 g128 gptq": export(int4, tokenizer, tmp_path / "gptq", "gptq"),
    }
    base = reports["fp16 hf"].total_bytes
    for name, r in reports.items():
        print(f"{name:<16} {r.total_bytes / 1e6:7.1f} MB  x{r.total_bytes / base:.3f}  {r.bits_per_weight:.2f} bits/weight "
              f"(layers {r.layer_bits_per_weight:.2f})")
    assert reports["fp16 hf"].layer_bits_per_weight == pytest.approx(16.0)
    assert reports["ternary bitnet"].layer_bits_per_weight == pytest.approx(2.0, abs=0.01)
    assert reports["int4 g128 gptq"].layer_bits_per_weight == pytest.approx(4.21, abs=0.01)  # + g_idx, qzeros
    assert reports["ternary bitnet"].total_bytes < 0.35 * base and reports["int4 g128 gptq"].total_bytes < 0.45 * base
