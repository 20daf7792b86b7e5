"""Our int4 quantiser variants on SmolLM2-135M, each measured on both domains against fp32 in the same run.

Decides defaults by measurement: each ``--variant NAME:FIELD=VALUE,...`` is a
``QuantConfig`` (GPTQ on ``--calib-seqs`` x ``--seq-len`` Shakespeare
calibration tokens unless ``gptq=False``), quantised in this process and
evaluated on the held-out Shakespeare split and the unseen "news" split
(``--eval-seqs`` sequences each), with the fp32 model measured alongside.
``calib=N`` in a variant overrides the calibration sequence count;
``round_up=true`` stores scales rounded *up* to fp16 (the quantiser before
issue 18), to measure rounding to nearest against it; ``refit_damp=X``,
``refit_passes=N`` and ``refit_alpha=A`` set GPTQ's group-refit knobs
(``compress.quantization.gptq.REFIT_DAMP`` / ``REFIT_PASSES`` /
``REFIT_ALPHA``) for that variant; ``clip_sides=false`` turns off
``compress.quantization.quantizers.CLIP_SIDES`` (the clip search of each end
of an asymmetric range alone, on by default); ``clip_floor=F`` lets the clip
search shrink a range down to F (``quantizers.CLIP_FACTORS``: 1.00 to 0.80 in
steps of 0.02 by default); ``awq=true`` folds activation-aware input scales
(``compress.quantization.scaling.scale_inputs``, AWQ) into the model before
quantising it; ``skip_positions=N`` leaves the first N positions of every
calibration window (the attention sink) out of GPTQ's input statistics.  Results
are appended to the JSON after every variant, so an interrupted run keeps
what it measured.

    python benchmarks/gptq_variants.py --group-size 64 --variant default: --variant calib128:calib=128
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _bench():
    spec = importlib.util.spec_from_file_location("_quant_quality", Path(__file__).with_name("quant_quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def _refit_knobs(damp, passes, alpha=None):
    """GPTQ's group-refit knobs set for one variant (None: as they are)."""
    from compress.quantization import gptq

    before = gptq.REFIT_DAMP, gptq.REFIT_PASSES, gptq.REFIT_ALPHA
    gptq.REFIT_DAMP = before[0] if damp is None else float(damp)
    gptq.REFIT_PASSES = before[1] if passes is None else int(passes)
    gptq.REFIT_ALPHA = before[2] if alpha is None else float(alpha)
    try:
        yield
    finally:
        gptq.REFIT_DAMP, gptq.REFIT_PASSES, gptq.REFIT_ALPHA = before


@contextmanager
def _clip_sides(on: bool | None):
    """Whether the clip search also shrinks each end of an asymmetric range alone (``quantizers.CLIP_SIDES``;
    None: as it is)."""
    from compress.quantization import quantizers

    before = quantizers.CLIP_SIDES
    quantizers.CLIP_SIDES = before if on is None else bool(on)
    try:
        yield
    finally:
        quantizers.CLIP_SIDES = before


@contextmanager
def _clip_floor(floor: float | None):
    """The clip search's smallest shrink factor, in steps of 0.02 from 1.0 (``quantizers.CLIP_FACTORS``, 0.80 by
    default; None: as it is)."""
    from compress.quantization import quantizers

    before = quantizers.CLIP_FACTORS
    if floor is not None:
        quantizers.CLIP_FACTORS = tuple(1.0 - 0.02 * i for i in range(round((1.0 - float(floor)) / 0.02) + 1))
    try:
        yield
    finally:
        quantizers.CLIP_FACTORS = before


@contextmanager
def _scales_rounded_up(on: bool):
    """Store scales rounded up to their dtype (the old ``_stored``) while quantising, if ``on``."""
    from compress.quantization import quantizers

    nearest = quantizers._stored

    def up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = x.to(torch.float32).clamp(min=torch.finfo(dtype).tiny)
        y = x.to(dtype)
        y = torch.where(y.to(torch.float32) < x, torch.nextafter(y, torch.full_like(y, float("inf"))), y)
        return y.to(torch.float32)

    if on:
        quantizers._stored = up
    try:
        yield
    finally:
        quantizers._stored = nearest


@contextmanager
def _skip_positions(n: int | None):
    """GPTQ's input statistics (H and GPTAQ's drift) without the first ``n`` positions of each calibration window
    (None or 0: all of them), by wrapping ``calibrate.input_product``."""
    from compress.quantization import calibrate

    real = calibrate.input_product

    def skipping(x, x_fp=None, dtype=torch.float32):
        if x.dim() == 3:  # [batch, position, features]
            x, x_fp = x[:, n:], None if x_fp is None else x_fp[:, n:]
        return real(x, x_fp, dtype)

    if n:
        calibrate.input_product = skipping
    try:
        yield
    finally:
        calibrate.input_product = real


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    fields: dict = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        fields[key.strip()] = json.loads(value.strip().replace("True", "true").replace("False", "false"))
    return name, fields


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-seqs", type=int, default=8)
    ap.add_argument("--calib-seqs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--variant", action="append", required=True, help="NAME:field=value,... (QuantConfig fields, calib=N)")
    ap.add_argument("--calib-source", default="shakespeare", choices=("shakespeare", "generated"),
                    help="calibration text: the Shakespeare calibration split, or text the model generates (cached)")
    ap.add_argument("--generate-tokens", type=int, default=32768, help="generated tokens for --calib-source generated")
    ap.add_argument("--output", default=str(RESULTS_DIR / "gptq_variants.json"))
    args = ap.parse_args(argv)

    import copy

    import compress
    from compress.data import UNSEEN_TEXT, TextConfig
    from compress.quantization import QuantConfig

    bench = _bench()
    model, tokenizer = compress.load_model(args.model)
    model.eval()
    splits = compress.load_text(None, tokenizer, TextConfig(seq_len=args.seq_len))
    news = compress.load_text(UNSEEN_TEXT, tokenizer, TextConfig(seq_len=args.seq_len))
    held = {"shakespeare": splits.eval[: args.eval_seqs], UNSEEN_TEXT: news.eval[: args.eval_seqs]}
    calibration = splits.calibration
    if args.calib_source == "generated":
        from compress.generated import GenerateConfig

        # All of the generated text calibrates: the evaluation is on Shakespeare's and news's held-out splits.
        gen = compress.load_text(
            "generated", tokenizer, TextConfig(seq_len=args.seq_len, eval_fraction=0.01, calibration_fraction=0.5),
            model=model, generate=GenerateConfig(tokens=args.generate_tokens))
        calibration = torch.cat([gen.calibration, gen.train])
    print(f"calibration: {args.calib_source}, {tuple(calibration.shape)} tokens available", flush=True)
    out = Path(args.output)
    result = {"benchmark": "gptq_variants",
              "command": "python benchmarks/gptq_variants.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"CPU, {os.cpu_count()} cores shared with other jobs (load {os.getloadavg()[0]:.1f} at start)",
              "model": args.model, "seq_len": args.seq_len, "calibration_source": args.calib_source, "eval_sequences": args.eval_seqs, "variants": {}}
    for text in args.variant:
        name, fields = parse_variant(text)
        calib_n = fields.pop("calib", args.calib_seqs)
        round_up = fields.pop("round_up", False)
        sides = fields.pop("clip_sides", None)
        floor = fields.pop("clip_floor", None)
        knobs = fields.pop("refit_damp", None), fields.pop("refit_passes", None), fields.pop("refit_alpha", None)
        awq = fields.pop("awq", None)
        skip = fields.pop("skip_positions", None)
        fields = {"group_size": args.group_size, "gptq": True, "progress": False, **fields}
        cfg = QuantConfig(calibration_sequences=calib_n, **fields)
        m = copy.deepcopy(model)
        print(f"[variant] {name}: {cfg.label()} {fields} calib {calib_n}", flush=True)
        start = time.perf_counter()
        with _scales_rounded_up(round_up), _refit_knobs(*knobs), _clip_sides(sides), _clip_floor(floor), \
                _skip_positions(skip):
            if awq:
                from compress.arch import adapter_for
                from compress.quantization.scaling import scale_inputs

                scale_inputs(adapter_for(m), calibration[:calib_n], cfg, progress=False)
            compress.quantize(m, cfg, data=calibration[:calib_n] if cfg.gptq else None)
        seconds = time.perf_counter() - start
        m.eval()
        row = {"fields": fields, "scales_rounded_up": round_up, **({} if sides is None else {"clip_sides": bool(sides)}),
               **({} if floor is None else {"clip_floor": float(floor)}),
               **({} if awq is None else {"awq": bool(awq)}),
               **({} if skip is None else {"skip_positions": int(skip)}),
               **{k: v for k, v in zip(("refit_damp", "refit_passes", "refit_alpha"), knobs) if v is not None},
               "calibration_sequences": min(calib_n, len(calibration)), "quantise_seconds": seconds, "domains": {}}
        for domain, ids in held.items():
            r = bench.compare_causal(model, {name: m}, ids, args.batch_size)
            row["domains"][domain] = {"fp32_perplexity": r["fp32"]["perplexity"], "perplexity": r[name]["perplexity"],
                                      "ratio": r[name]["perplexity"] / r["fp32"]["perplexity"],
                                      "kl_to_fp32": r[name]["kl_to_fp32"], "top1_agreement": r[name]["top1_agreement"],
                                      # the ratio is exp(mean per-sequence NLL difference): its paired 95% interval
                                      "ratio_ci95": [math.exp(x) for x in bench.paired(
                                          r[name]["per_sequence_nll"], r["fp32"]["per_sequence_nll"])["ci95"]],
                                      "per_sequence_nll": r[name]["per_sequence_nll"],
                                      "fp32_per_sequence_nll": r["fp32"]["per_sequence_nll"]}
        result["variants"][name] = row
        d = row["domains"]
        print(f"[result] {name}: shakespeare {d['shakespeare']['perplexity']:.2f} ({d['shakespeare']['ratio']:.3f}x, "
              f"KL {d['shakespeare']['kl_to_fp32']:.4f}) news {d[UNSEEN_TEXT]['perplexity']:.2f} "
              f"({d[UNSEEN_TEXT]['ratio']:.3f}x, KL {d[UNSEEN_TEXT]['kl_to_fp32']:.4f}) in {seconds:.0f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
        del m
    return 0


if __name__ == "__main__":
    sys.exit(main())
