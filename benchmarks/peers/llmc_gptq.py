"""llm-compressor's GPTQ on a local model, run by benchmarks/peer_gptq.py in llm-compressor's own venv.

Not part of compress-lm (it imports nothing of it): ``python3 -m venv
~/.cache/compress-lm/llmc-venv && ~/.cache/compress-lm/llmc-venv/bin/pip install
torch==2.13.0 llmcompressor==0.14.0.1`` (``make setup-peers``), then

    ~/.cache/compress-lm/llmc-venv/bin/python benchmarks/peers/llmc_gptq.py \
        --model-dir DIR --calib ids.pt --scheme W4A16 --group-size 64 --out OUT

loads the model in float32 with transformers, runs ``oneshot`` with
``GPTQModifier(targets="Linear", ignore=["lm_head"], dampening_frac=0.01)``
(its default activation order) on exactly the token ids in ``ids.pt`` (a
[N, T] int64 tensor), then writes OUT/weights.safetensors (every quantised
linear's weight, dequantised, float32) and OUT/run.json (wall time of
``oneshot``, resident memory before and at the peak, versions).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _status_mib(field: str) -> float | None:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, help="a local Hugging Face model directory (config.json, safetensors)")
    ap.add_argument("--calib", required=True, help="a .pt file holding a [N, T] int64 tensor of calibration token ids")
    ap.add_argument("--scheme", default="W4A16", choices=("W4A16", "W4A16_ASYM"),
                    help="compressed-tensors preset; its group size is replaced by --group-size")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    rss_start = _status_mib("VmRSS")
    import torch
    from compressed_tensors.quantization import QuantizationScheme, preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from datasets import Dataset
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    import compressed_tensors
    import llmcompressor
    import transformers
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier

    rss_runtime = _status_mib("VmRSS")
    ids = torch.load(args.calib)
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.dtype == torch.long):
        print(f"{args.calib} does not hold a [N, T] int64 tensor of token ids; write one with torch.save.", file=sys.stderr)
        return 2
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    model.eval()
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})

    # The preset as llm-compressor defines it (group 128), with the group size asked for.
    scheme: QuantizationScheme = preset_name_to_scheme(args.scheme, ["Linear"])
    scheme.weights.group_size = args.group_size
    # llm-compressor 0.14 quantises whole groups only: its divisibility check can be bypassed, but its weight
    # observer then fails to reshape the rows (SmolLM2-135M: 576 columns = 4.5 groups of 128).  Say so up front.
    ragged = sorted({m.in_features for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head") and m.in_features % args.group_size})
    if ragged:
        print(f"llm-compressor {llmcompressor.__version__} cannot quantise linears with {ragged} input columns in groups "
              f"of {args.group_size} (not a multiple; its observer reshapes each row into whole groups); use a group "
              "size that divides them.", file=sys.stderr)
        return 3
    modifier = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], dampening_frac=args.damp)
    rss_loaded = _status_mib("VmRSS")
    peak_loading = _status_mib("VmHWM")
    peak_reset = _reset_peak()
    start = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=[modifier], num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1], log_dir=None)
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")

    weights, worst, modules = {}, 0.0, 0
    with torch.no_grad():
        for name, module in model.named_modules():
            qargs = getattr(getattr(module, "quantization_scheme", None), "weights", None)
            if qargs is None or not hasattr(module, "weight_scale"):
                continue
            zero = getattr(module, "weight_zero_point", None)
            if zero is None:
                zero = torch.zeros_like(module.weight_scale, dtype=torch.int8)
            dense = fake_quantize(module.weight.float(), module.weight_scale.float(), zero, qargs)
            worst = max(worst, (dense - module.weight.float()).abs().max().item())
            weights[f"{name}.weight"] = dense.contiguous()
            modules += 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "weights.safetensors"))
    scheme_args = scheme.weights.model_dump(mode="json")
    run = {
        "library": "llm-compressor", "scheme": args.scheme, "weights": scheme_args, "dampening_frac": args.damp,
        "actorder": str(scheme_args.get("actorder")), "modules": modules,
        "max_abs_weight_minus_fake_quantised": worst,
        "calibration_sequences": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
        "seconds": seconds, "threads": torch.get_num_threads(),
        "rss_start_mib": rss_start, "rss_runtime_mib": rss_runtime, "rss_loaded_mib": rss_loaded,
        "peak_rss_mib": peak, "peak_reset_worked": peak_reset, "peak_while_loading_mib": peak_loading,
        "peak_over_loaded_mib": (peak - rss_loaded) if peak_reset and peak and rss_loaded else None,
        "versions": {"llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
        "pid": os.getpid(),
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(json.dumps(run, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
