"""The ``compress-lm`` command.

Argument parsing only: each subcommand builds the config dataclasses the
Python API takes and calls the API.  User errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from compress.errors import CompressError

EXIT_USAGE = 2


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="built-in name (smollm2-135m, gemma3-270m, minilm-l6), HF directory, .gguf file or hub id")


def _add_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--data", nargs="+", metavar="FILE", help=f"{what}: text/Markdown/.jsonl files or directories (default: the built-in Shakespeare corpus)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the private generator that splits the text (default 0)")


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="output checkpoint directory (reopen with compress.load)")
    p.add_argument("--force", action="store_true", help="replace the output directory if it exists")


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compress-lm", description="Make small language models smaller and faster.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="perplexity, KL to a reference, size and speed on held-out text")
    _add_model(p)
    _add_data(p, "text to evaluate on (its held-out split is used)")
    _add_runtime(p)
    p.add_argument("--reference", metavar="MODEL", help="compare with this model: KL divergence and top-1 agreement")
    p.add_argument("--max-sequences", type=int, default=32, help="held-out sequences to evaluate (default 32)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward pass (default 4)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prune", help="structured pruning (Adapt-Pruner): removes MLP channels and kv groups")
    _add_model(p)
    p.add_argument("--sparsity", type=float, default=0.3, help="fraction of non-embedding parameters to remove (default 0.3)")
    p.add_argument("--method", choices=["adapt", "uniform"], default="adapt", help="per-layer allocation (default adapt)")
    p.add_argument("--importance", choices=["taylor", "magnitude", "activation"], default="taylor", help="channel score (default taylor)")
    p.add_argument("--round-to", type=int, default=8, help="keep MLP widths a multiple of this (default 8)")
    p.add_argument("--drop-layers", type=int, default=0, help="also remove this many whole layers (default 0)")
    _add_data(p, "calibration text")
    _add_output(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("quantize", help="ternary or int4 quantisation to packed weights")
    _add_model(p)
    p.add_argument("--method", choices=["ternary", "int4"], required=True)
    p.add_argument("--group-size", type=int, default=128, help="int4 group size: 32, 64, 128 or -1 per channel (default 128)")
    p.add_argument("--asymmetric", action="store_true", help="int4 with zero points")
    p.add_argument("--gptq", action="store_true", help="int4 with GPTQ error compensation (uses --data)")
    p.add_argument("--scale", choices=["absmean", "absmedian"], default="absmean", help="ternary scale (default absmean, BitNet b1.58)")
    p.add_argument("--a8", action="store_true", help="ternary with 8-bit activations (W1.58A8)")
    _add_data(p, "calibration text for GPTQ")
    _add_output(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("recover", help="recovery training: distillation from a teacher, LoRA; resumable")
    _add_model(p)
    p.add_argument("--teacher", metavar="MODEL", help="distil toward this model (default: plain next-token loss)")
    _add_data(p, "training text (its training split; held-out split for evaluations)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="optimiser steps")
    budget.add_argument("--tokens", type=int, help="training tokens (instead of --steps)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--lora", type=int, default=0, metavar="R", help="train rank-R LoRA adapters only, merged at the end")
    p.add_argument("--resume", action="store_true", help="continue from the last training checkpoint in OUTPUT/train-state")
    _add_output(p)
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("export", help="export a checkpoint to another format [not built yet]")
    _add_model(p)
    p.add_argument("--format", choices=["native", "hf", "bitnet", "gptq", "compressed-tensors", "gguf"], required=True)
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.set_defaults(func=_not_built("export"))

    p = sub.add_parser("run", help="run a whole recipe with a report [not built yet]")
    p.add_argument("--recipe", required=True, help="recipe YAML file or built-in recipe name")
    p.add_argument("--model", help="override the recipe's model")
    p.add_argument("-o", "--output", help="output directory")
    p.set_defaults(func=_not_built("run"))

    p = sub.add_parser("bench", help="kernel microbenchmarks (needs a GPU); end-to-end model speed [not built yet]")
    p.add_argument("what", choices=["kernels", "model"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the benchmark script (see its --help)")
    p.set_defaults(func=cmd_bench)
    return parser


def _not_built(command: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise NotImplementedError(f"`compress-lm {command}` is not built yet; see the feature table in README.md.")

    return run


def _check_output(args: argparse.Namespace) -> None:
    # fail before the expensive work, not after it
    from compress.io.atomic import check_output_dir

    check_output_dir(Path(args.output).expanduser().resolve(), args.force)


def _compress_and_save(args: argparse.Namespace, needs_data: bool, step: Callable) -> int:
    """Load MODEL (and text when ``needs_data``), run ``step(model, data)`` in place, print its report, save."""
    import compress
    from compress.data import TextConfig

    _check_output(args)
    model, tokenizer = compress.load_model(args.model)
    data = compress.load_text(args.data, tokenizer, TextConfig(seq_len=args.seq_len, seed=args.seed)) if needs_data else None
    print(step(model, data).table())
    print(f"checkpoint written to {compress.save(model, args.output, tokenizer, overwrite=args.force)}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from compress import api
    from compress.prune import PruneConfig

    config = PruneConfig(sparsity=args.sparsity, method=args.method, importance=args.importance,
                         round_to=args.round_to, drop_layers=args.drop_layers, seed=args.seed,
                         calib_seq_len=min(64, args.seq_len))  # Adapt-Pruner's 64-token windows, cut from the sequences
    return _compress_and_save(args, config.needs_data, lambda model, data: api.prune(model, config, data=data))


def cmd_quantize(args: argparse.Namespace) -> int:
    from compress import api
    from compress.quant import QuantConfig

    config = QuantConfig(method=args.method, group_size=args.group_size, symmetric=not args.asymmetric,
                         gptq=args.gptq, scale=args.scale, activations="a8" if args.a8 else "a16")
    return _compress_and_save(args, config.gptq, lambda model, data: api.quantize(model, config, data=data))


def cmd_recover(args: argparse.Namespace) -> int:
    import compress
    from compress import api
    from compress.data import TextConfig
    from compress.recover import RecoverConfig, is_main_process

    out = Path(args.output).expanduser().resolve()
    config = RecoverConfig(steps=args.steps, tokens=args.tokens, batch_size=args.batch_size, lr=args.lr,
                           lora_rank=args.lora, resume=args.resume, seed=args.seed,
                           output_dir=str(out.parent / f".{out.name}.train-state"))
    if not args.resume:
        _check_output(args)
    model, tokenizer = compress.load_model(args.model)
    teacher = compress.load_model(args.teacher).model if args.teacher else None
    data = compress.load_text(args.data, tokenizer, TextConfig(seq_len=args.seq_len, seed=args.seed))
    report = api.recover(model, teacher, data, config)
    if is_main_process():  # under torchrun only rank 0 writes
        print(report)
        print(f"checkpoint written to {compress.save(model, out, tokenizer, overwrite=args.force or args.resume)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "model":
        raise NotImplementedError("`compress-lm bench model` is not built yet; see the feature table in README.md.")
    return _benchmark_script("kernels").main(args.args)


def _benchmark_script(name: str):
    """Load benchmarks/<name>.py from the source checkout (benchmarks/ is not installed)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    if not path.is_file():
        raise CompressError(f"The benchmark {path} is not here: benchmarks ship with the source checkout; run from a clone of compress-lm.")
    spec = importlib.util.spec_from_file_location(f"compress_benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    import compress
    from compress.data import TextConfig
    from compress.eval import EvalConfig

    text_cfg = TextConfig(seq_len=args.seq_len, seed=args.seed)
    dtype = getattr(torch, args.dtype)
    model, tokenizer = compress.load_model(args.model, dtype=dtype, device=args.device)
    eval_cfg = EvalConfig(
        batch_size=args.batch_size,
        max_sequences=args.max_sequences,
        mask_token_id=getattr(tokenizer, "mask_token_id", None),
    )
    reference = None
    if args.reference:
        reference, _ = compress.load_model(args.reference, dtype=dtype, device=args.device)
    data = compress.load_text(args.data, tokenizer, text_cfg)
    report = compress.evaluate(model, data, reference, eval_cfg, name=args.model, reference_name=args.reference or "reference")
    print(report.table())
    if args.json:
        print(f"report written to {report.save_json(args.json)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CompressError, NotImplementedError) as err:
        print(f"compress-lm {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
