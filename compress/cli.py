"""The ``compress-lm`` command.

Argument parsing only: each subcommand builds the config dataclasses the
Python API takes and calls the API.  User errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from compress.errors import CompressError

EXIT_USAGE = 2


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="built-in name (smollm2-135m, gemma3-270m, minilm-l6), HF directory, .gguf file or hub id")


def _add_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--data", nargs="+", metavar="FILE", help=f"{what}: text/Markdown/.jsonl files or directories (default: the built-in Shakespeare corpus)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the private generator that splits the text (default 0)")


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

    p = sub.add_parser("prune", help="structured pruning (Adapt-Pruner) [not built yet]")
    _add_model(p)
    p.add_argument("--sparsity", type=float, default=0.3, help="fraction of non-embedding parameters to remove")
    _add_data(p, "calibration text")
    p.add_argument("-o", "--output", required=True, help="output checkpoint directory")
    p.set_defaults(func=_not_built("prune"))

    p = sub.add_parser("quantize", help="ternary or int4 quantisation [not built yet]")
    _add_model(p)
    p.add_argument("--method", choices=["ternary", "int4"], required=True)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--gptq", action="store_true", help="int4 with GPTQ error compensation")
    _add_data(p, "calibration text for GPTQ")
    p.add_argument("-o", "--output", required=True, help="output checkpoint directory")
    p.set_defaults(func=_not_built("quantize"))

    p = sub.add_parser("recover", help="recovery training: distillation, QAT, LoRA [not built yet]")
    _add_model(p)
    p.add_argument("--teacher", metavar="MODEL")
    _add_data(p, "training text")
    p.add_argument("-o", "--output", required=True, help="output checkpoint directory")
    p.set_defaults(func=_not_built("recover"))

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


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "model":
        raise NotImplementedError("`compress-lm bench model` is not built yet; see the feature table in README.md.")
    return _benchmark_script("kernels").main(args.args)


def _benchmark_script(name: str):
    """Load benchmarks/<name>.py from the source checkout (benchmarks/ is not installed)."""
    import importlib.util
    from pathlib import Path

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
