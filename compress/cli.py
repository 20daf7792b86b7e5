"""The ``compress-lm`` command.

Argument parsing only: each subcommand builds the config dataclasses the
Python API takes and calls the API.  User errors print one line and exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from compress.errors import CompressError, shorten

EXIT_USAGE = 2


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="built-in name (smollm2-135m, gemma3-270m, minilm-l6), HF directory, .gguf file or hub id")


SEQ_LEN = 512  # --seq-len when not given


def _add_data(p: argparse.ArgumentParser, what: str, default: str | None = None) -> None:
    default = default or ("half text the model writes itself ('generated', cached), half the built-in Shakespeare; "
                          "encoders: the built-in Shakespeare")
    p.add_argument("--data", nargs="+", metavar="FILE",
                   help=f"{what}: text/Markdown/.jsonl files or directories, a named text (generated, shakespeare), "
                        f"or a mix with shares, e.g. generated=0.5 notes/=0.5 (default: {default})")
    p.add_argument("--generate-tokens", type=int, default=None, metavar="N",
                   help="tokens of generated text to write (and cache) when the data is 'generated' (default 8192)")
    p.add_argument("--seq-len", type=int, default=None,
                   help=f"tokens per sequence, at most the model's context (default {SEQ_LEN}, or the model's context "
                        f"when that is shorter)")
    p.add_argument("--seed", type=int, default=0, help="seed of the private generator that splits the text (default 0)")


STORAGE_DTYPES = ["bfloat16", "float16", "float32"]


def _add_output(p: argparse.ArgumentParser, force: str = "replace the output directory if it exists") -> None:
    p.add_argument("-o", "--output", required=True, help="output checkpoint directory (reopen with compress.load)")
    p.add_argument("--force", action="store_true", help=force)
    p.add_argument("--dtype", choices=STORAGE_DTYPES,
                   help="dtype the checkpoint stores float tensors in (default bfloat16; compress.load computes in float32)")


def _add_runtime(p: argparse.ArgumentParser, dtype: bool = True) -> None:
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    if dtype:
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32)")


def _config_options(p: argparse.ArgumentParser, cls: type) -> Callable[..., None]:
    """``option("--flag", ...)`` for a field of the dataclass ``cls``: no CLI default (the config's
    applies, and the help says what it is), so a flag the user did not give is not passed on."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}

    def option(flag: str, **kwargs: Any) -> None:
        name = flag.lstrip("-").replace("-", "_")
        default = defaults[name]
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        shown = "none" if shown in ((), "", None) else shown
        p.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=f"{kwargs.pop('help')} (default {shown})", **kwargs)

    return option


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user gave on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compress-lm", description="Make small language models smaller and faster.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="perplexity, KL to a reference, size and speed on held-out text")
    _add_model(p)
    _add_data(p, "the calibration domain to evaluate on (its held-out split is used)", "the built-in Shakespeare")
    p.add_argument("--eval-data", nargs="+", metavar="FILE", help="also evaluate on your own text (all of it): a third column")
    _add_runtime(p)
    p.add_argument("--reference", metavar="MODEL", help="compare with this model: KL divergence and top-1 agreement")
    p.add_argument("--max-sequences", type=int, default=32, help="held-out sequences to evaluate (default 32)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward pass (default 4)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    p.add_argument("--tasks", metavar="T1,T2", help="also run these lm-evaluation-harness tasks on the model as it is "
                   "(needs pip install 'compress-lm[tasks]'); with --tasks, perplexity runs only when --data is given")
    p.add_argument("--include-path", metavar="DIR", help="a directory of lm-eval task YAML files (e.g. tests/lmeval_tasks)")
    p.add_argument("--limit", type=int, metavar="N", help="lm-eval documents per task (default: all)")
    p.add_argument("--num-fewshot", type=int, metavar="K", help="lm-eval few-shot examples (default: each task's own)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prune", help="structured pruning (Adapt-Pruner): removes MLP channels and kv groups")
    _add_model(p)
    from compress.pruning.config import IMPORTANCES, METHODS, STAGE_SPLITS, PruneConfig

    option = _config_options(p, PruneConfig)  # defaults come from PruneConfig: one set for the CLI, API and recipes
    option("--sparsity", type=float, help="fraction of non-embedding parameters to remove")
    option("--method", choices=METHODS, help="per-layer allocation")
    option("--importance", choices=IMPORTANCES, help="channel score")
    option("--round-to", type=int, help="keep MLP widths a multiple of this")
    option("--drop-layers", type=int, help="also remove this many whole layers")
    option("--protect-layers", type=int, nargs="+", metavar="I",
           help="decoder layers (0-based) kept at full width; the others carry the budget")
    option("--step", type=float, help="Adapt-Pruner sub-step: the sparsity added per re-scoring round (smaller: slower, finer)")
    option("--amplitude", type=float, help="Adapt-Pruner amplitude A: how far layer sparsities spread around the mean "
           "(default: the step, A = Delta as the released scripts)")
    option("--calib-samples", type=int, metavar="N", help="calibration windows drawn afresh at each sub-step")
    option("--calib-seq-len", type=int, metavar="N", help="tokens per calibration window (at most --seq-len)")
    option("--batch-size", type=int, help="calibration windows per forward/backward pass")
    option("--kv-loss-windows", type=int, metavar="N",
           help="calibration windows on which each kv group's removal is measured before one goes (0: scores only)")
    p.add_argument("--refit", dest="refit", action="store_true", default=argparse.SUPPRESS,
                   help="after pruning, refit each layer's o and mlp_out by least squares to the original's outputs "
                        "(best when no training follows; default off)")
    option("--refit-samples", type=int, metavar="N", help="calibration sequences (whole) the refit after pruning reads")
    option("--refit-damp", type=float, help="ridge term of the refit, as a fraction of the mean input energy (larger: gentler)")
    option("--stages", type=int,
           help="prune in this many stages with distillation from the original between them (Adapt-Accel)")
    option("--stage-tokens", type=int, metavar="N", help="training tokens per stage on average (needed with --stages > 1)")
    option("--stage-split", choices=STAGE_SPLITS, help="how the stages share the training tokens")
    p.add_argument("--stage-lr", type=float, default=1e-4, help="peak learning rate of the training between stages (default 1e-4)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data(p, "calibration text (and, with --stages, training text)")
    _add_output(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("quantize", help="ternary, int4 or int3 quantisation to packed weights")
    _add_model(p)
    from compress.quantization.config import QuantConfig
    p.add_argument("--method", choices=["ternary", "int4", "int3"],
                   help="the format of every targeted module (required unless --target-size chooses them); int3 takes "
                        "the int4 options (group size, zero points, GPTQ) with 3-bit codes")
    p.add_argument("--group-size", type=int, default=128, help="int4 group size: 32, 64, 128 (a last partial group is fine) or -1 per channel (default 128)")
    p.add_argument("--asymmetric", action="store_true", help="int4 with zero points")
    p.add_argument("--gptq", action="store_true", help="int4 with GPTQ error compensation (uses --data)")
    p.add_argument("--no-gptaq", dest="gptaq", action="store_false",
                   help="plain GPTQ: each layer matches its own weights' outputs, instead of the original model's "
                        "(GPTAQ, on by default, compensates earlier layers' error too at about twice the calibration passes)")
    p.add_argument("--zero-point", choices=["integer", "float"], default="integer",
                   help="with --asymmetric: whole-code zero points (gptq, compressed-tensors, GGUF Q4_1) or exact "
                        "min-max offsets (lower error; native and GGUF Q4_1 only) (default integer)")
    p.add_argument("--no-act-order", dest="act_order", action="store_false",
                   help="GPTQ in plain column order instead of by decreasing input energy (act_order overfits less; on by default)")
    p.add_argument("--no-clip-search", dest="clip_search", action="store_false",
                   help="int4 group ranges from min/max alone, without searching shrink factors 1.0..0.8 (on by default)")
    p.add_argument("--no-group-refit", dest="group_refit", action="store_false",
                   help="GPTQ keeps each group's scale (and zero point) as chosen before the codes, instead of refitting "
                        "them by least squares to the codes under the layer's output error (on by default)")
    p.add_argument("--static-groups", action="store_true", default=argparse.SUPPRESS,
                   help="GPTQ with act order: each group's scale and zero point from the original weights, instead of "
                        "from the weights as updated when the loop first reaches the group (the default)")
    p.add_argument("--code-sweeps", type=int, default=argparse.SUPPRESS, metavar="N",
                   help=f"GPTQ: sweeps of coordinate descent over the codes after the column loop, each followed by "
                        f"the group refit when it is on; 0 turns them off (default {QuantConfig.code_sweeps})")
    p.add_argument("--calibration-dtype", choices=["auto", "float32", "bfloat16"], default=argparse.SUPPRESS,
                   help="GPTQ's calibration forwards and input products in bfloat16 (the Hessians accumulate and GPTQ "
                        "runs in float32): several times faster where the hardware has bf16 units; auto (default) "
                        "picks bfloat16 there and float32 elsewhere")
    p.add_argument("--calibration-sequences", type=int, default=argparse.SUPPRESS, metavar="N",
                   help=f"GPTQ reads at most N calibration sequences of --seq-len tokens "
                        f"(default {QuantConfig.calibration_sequences}, QuantConfig's)")
    p.add_argument("--scale", choices=["absmean", "absmedian"], default="absmean", help="ternary scale (default absmean, BitNet b1.58)")
    p.add_argument("--a8", action="store_true", help="ternary with 8-bit activations (W1.58A8)")
    p.add_argument("--embeddings", choices=["int8", "int4", "none"],
                   help="also quantise the input embedding and output head (a tied pair once): int8 per row or int4 "
                        "groups (default none: kept in --dtype)")
    p.add_argument("--embedding-group-size", type=int, metavar="G",
                   help="int4 embedding group size along the row, a power of two (default 32, GGUF's Q4_0 block)")
    p.add_argument("--embedding-rounding", choices=["gptq", "nearest"],
                   help="how --embeddings chooses the table's codes: gptq (default) against the output head's inputs "
                        "on --data (the default text when none is given; lower error on any text), or nearest "
                        "(no calibration text read)")
    p.add_argument("--target-size", metavar="SIZE",
                   help="size budget of the weights file, e.g. 80MiB (B, KB, KiB, MB, MiB, GB, GiB): each module's "
                        "format is chosen by measured error per byte (uses --data); --method is then the base")
    p.add_argument("--target-formats", nargs="+", metavar="FORMAT",
                   help="formats --target-size chooses among (default all: keep int4-g128 int4-g64 int4-g32 "
                        "int3-g128 int3-g64 int3-g32 ternary embeddings-int8 embeddings-int4; leave the int3 ones out "
                        "for a GGUF file that must meet the budget too: GGUF stores int3 in 4-bit blocks)")
    p.add_argument("--target-metric", choices=["layer-error", "module-error", "kl"],
                   help="sensitivity probe --target-size measures errors with (default layer-error; kl is slowest)")
    p.add_argument("--target-sequences", type=int, metavar="N",
                   help="calibration windows --target-size measures errors on (default 4)")
    _add_data(p, "calibration text for GPTQ, --target-size and --embeddings' GPTQ codes")
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
    p.add_argument("--hidden-weight", type=float, default=0.0, metavar="W",
                   help="with --teacher: add W x the decoder layers' hidden-state error to the KL (default 0: off)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="training checkpoints and log (default OUTPUT.train-state beside OUTPUT); the same command "
                        "again continues from the newest checkpoint there, as `run` does; the checkpoints are deleted "
                        "once OUTPUT is written, the log stays")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --state-dir (what the same command does anyway), "
                        "and replace OUTPUT if a finished run wrote it")
    p.add_argument("--distributed", choices=["auto", "ddp", "fsdp"], default="auto",
                   help="under torchrun: DDP (whole model on every process) or FSDP (sharded); auto: FSDP from 1e9 parameters")
    _add_output(p, force="replace the output directory if it exists, and start training over (the checkpoints in "
                         "--state-dir are deleted)")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("sensitivity", help="per-layer and per-module error of pruning and of each quantisation format; heat map, override map")
    _add_model(p)
    _add_data(p, "calibration text (its calibration split is used)")
    _add_runtime(p)
    p.add_argument("--metric", choices=["layer-error", "module-error", "kl"], default="layer-error",
                   help="layer-error: change of the layer's output (default); module-error: of the module's output (fastest); kl: of the model's output distribution (slowest)")
    p.add_argument("--formats", nargs="+", metavar="FORMAT", help="quantisation formats to try (default: int4-g128 int4-g64 int4-g32 ternary-absmean ternary-absmedian; int3-g128 int3-g64 int3-g32 on request)")
    p.add_argument("--sequences", type=int, default=4, help="calibration sequences (default 4)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward pass (default 4)")
    p.add_argument("--prune-fraction", type=float, default=0.5, help="share of each layer's MLP channels / kv groups removed to measure pruning (default 0.5)")
    p.add_argument("--importance", choices=["taylor", "magnitude", "activation"], default="taylor", help="which channels pruning removes (default taylor)")
    p.add_argument("--top", type=int, default=15, help="list this many most sensitive modules (default 15)")
    p.add_argument("--heatmap", default="sensitivity.png", metavar="PATH", help="heat-map PNG (default sensitivity.png)")
    p.add_argument("--json", metavar="PATH", help="also write the whole report as JSON here")
    p.add_argument("--overrides", metavar="PATH", help="write a per-module override map (YAML) for a recipe here")
    p.add_argument("--target", metavar="FORMAT", help="override map: the format the rest is quantised with (default: the first of --formats)")
    p.add_argument("--keep", type=float, default=0.1, help="override map: fraction of modules kept at higher precision, and of layers protected from pruning (default 0.1)")
    p.add_argument("--promote-to", default="full", metavar="FORMAT", help="override map: what the kept modules get, 'full' precision (default) or a format")
    p.add_argument("--protect", type=int, metavar="N", help="override map: protect this many layers from pruning (default: --keep of them)")
    p.add_argument("--force", action="store_true", help="replace output files that exist")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("export", help="write a model in a format other tools load (hf, bitnet, gptq, compressed-tensors, gguf) and check it loads there")
    _add_model(p)
    p.add_argument("--format", choices=["native", "hf", "bitnet", "gptq", "compressed-tensors", "gguf"], required=True,
                   help="hf: float weights; bitnet: ternary models (transformers' BitNet); gptq / compressed-tensors: "
                        "int4 models; gguf: llama.cpp; native: compress.save's checkpoint")
    p.add_argument("--gguf-type", choices=["f16", "q8_0", "q4_0", "q4_1", "tq2_0", "tq1_0", "mixed"],
                   help="gguf only (default: mixed, each tensor in its own type, for layers of more than one kind, as a "
                        "--target-size model's; else tq2_0 for ternary, q4_0/q4_1 for int4, f16 for float models)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    p.add_argument("--no-verify", action="store_true",
                   help="skip loading the result with a loader that is not compress-lm's and comparing logits")
    p.add_argument("--dtype", choices=STORAGE_DTYPES,
                   help="dtype float tensors are stored in (default: bfloat16; float16 for gptq and gguf)")
    _add_runtime(p, dtype=False)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="a whole recipe (prune, recover, quantize, export) with a pre-flight check and a report; resumable")
    p.add_argument("--recipe", default="default", help="recipe YAML file or built-in recipe (default, small-fast, smallest; `--recipe list` shows them)")
    p.add_argument("--model", help="override the recipe's model (built-in name, HF directory, .gguf file or hub id)")
    p.add_argument("--data", nargs="+", metavar="FILE",
                   help="override the recipe's text: text/Markdown/.jsonl files or directories, a named text (generated, "
                        "shakespeare) or a mix with shares, e.g. generated=0.5 notes/=0.5")
    p.add_argument("--eval-data", nargs="+", metavar="FILE", help="also evaluate every stage on your own text: a third domain")
    p.add_argument("-o", "--output", help="run directory (default runs/<recipe name>); the same command again resumes there")
    p.add_argument("--force", action="store_true", help="replace a run directory that holds another model's or text's run")
    p.add_argument("--check", action="store_true", help="only load the model and text and run the pre-flight check")
    p.add_argument("--show", action="store_true", help="print the recipe with every option spelled out, and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="check a checkpoint, export or run directory: every file's sha256, no unlisted files, "
                                      "the shipped modeling file's sha256, leftovers of interrupted writes")
    p.add_argument("directory", help="a directory compress-lm wrote")
    p.set_defaults(func=cmd_verify)

    bench_help = ("kernel microbenchmarks and end-to-end decode speed (need a GPU; `bench model --smoke` checks on the "
                  "CPU); checkout only: runs benchmarks/ of a clone of compress-lm, which a wheel does not install")
    p = sub.add_parser("bench", help=bench_help, description=bench_help)
    p.add_argument("what", choices=["kernels", "model"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the benchmark script (see its --help)")
    p.set_defaults(func=cmd_bench)
    return parser


def _inputs(args: argparse.Namespace) -> list[Path]:
    """The local paths this command reads models from: an output must never replace them."""
    names = [getattr(args, k, None) for k in ("model", "teacher", "reference")]
    return [Path(n).expanduser() for n in names if n and Path(n).expanduser().exists()]


def _check_output(args: argparse.Namespace, needed_bytes: int | None = None) -> None:
    # fail before the expensive work, not after it
    from compress.io.atomic import check_output_dir

    check_output_dir(Path(args.output).expanduser().resolve(), args.force, _inputs(args), needed_bytes)


def _check_file_output(path: str | None, force: bool) -> None:
    """A report file (--json, --heatmap, --overrides): not a directory, not replaced without --force, writable."""
    from compress.io.outputs import check_location

    if not path:
        return
    p = Path(path).expanduser()
    if p.is_dir() or (p.exists() and not force):
        raise CompressError(f"'{path}' already exists; pass --force to replace it, or choose another path.")
    check_location(p)


def _parent_made(path: str) -> str:
    Path(path).expanduser().absolute().parent.mkdir(parents=True, exist_ok=True)
    return path


def _load_data(args: argparse.Namespace, tokenizer, writer):
    """The command's text: --data, or the default (text ``writer``, the uncompressed model, generates itself)."""
    import compress
    from compress.data import TextConfig, default_source
    from compress.generated import GenerateConfig

    generate = GenerateConfig(tokens=args.generate_tokens) if args.generate_tokens is not None else None
    source = args.data if args.data else default_source(writer)
    _fit_context(args, writer)
    return compress.load_text(source, tokenizer, TextConfig(seq_len=args.seq_len, seed=args.seed), model=writer,
                              generate=generate)


def _seq_len_given(args: argparse.Namespace) -> None:
    """``args.seq_len`` set (the default when not given), ``args.seq_len_given`` saying whether it was."""
    if hasattr(args, "seq_len"):
        args.seq_len_given = args.seq_len is not None
        if args.seq_len is None:
            args.seq_len = SEQ_LEN


def _fit_context(args: argparse.Namespace, model: Any) -> None:
    """--seq-len against the model's context (``max_position_embeddings``): a longer one given is one sentence;
    the default, when longer, becomes the context with a one-line notice."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = getattr(text, "max_position_embeddings", None)
    if not isinstance(context, int) or args.seq_len <= context:
        return
    if args.seq_len_given:
        raise CompressError(f"--seq-len {args.seq_len} is longer than the model's context of {context} positions "
                            f"(max_position_embeddings); lower --seq-len to at most {context}.")
    print(f"note: sequences of {context} tokens, the model's context (max_position_embeddings), shorter than the "
          f"default --seq-len {SEQ_LEN}.")
    args.seq_len = context


def _compress_and_save(args: argparse.Namespace, needs_data: bool, step: Callable, linear_bits: float | None = None,
                       precheck: Callable | None = None, budget: bool = False) -> int:
    """Load MODEL (and text when ``needs_data``), run ``step(model, data)`` in place, print its report, save."""
    import compress
    from compress.io.outputs import estimated_bytes

    _check_output(args)
    model, tokenizer = compress.load_model(args.model)
    if precheck is not None:
        precheck(model)
    _check_output(args, estimated_bytes(model, linear_bits))  # the free space, now that the size is known
    data = _load_data(args, tokenizer, model) if needs_data else None
    report = step(model, data)
    if not budget:
        print(report.table())
    path = compress.save(model, args.output, tokenizer, overwrite=args.force, dtype=args.dtype)
    if budget:  # the report's last line compares the file written with the prediction
        report.saved_bytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        print(report.table())
    print(f"checkpoint written to {path}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from compress import api
    from compress.pruning import PruneConfig

    given = _given(args, PruneConfig)
    given["calib_seq_len"] = _calib_seq_len(given.get("calib_seq_len"), args.seq_len, PruneConfig.calib_seq_len)
    if "protect_layers" in given:
        given["protect_layers"] = tuple(given["protect_layers"])
    if given.get("stages", 1) > 1:  # the training between stages; held-out figures on 16 sequences before and after each
        from compress.recovery import RecoverConfig

        given["recover"] = RecoverConfig(lr=args.stage_lr, eval_every=0, eval_sequences=16)
    config = PruneConfig(progress=not args.quiet, **given)  # given holds --seed too
    return _compress_and_save(args, config.needs_data, lambda model, data: api.prune(model, config, data=data))


def _calib_seq_len(given: int | None, seq_len: int, default: int | None) -> int | None:
    """Calibration windows are cut from the text's --seq-len sequences: a longer --calib-seq-len is refused
    before any loading; the default, when longer, becomes --seq-len with a one-line notice."""
    if given is not None:
        if given > seq_len:
            raise CompressError(f"--calib-seq-len {given} is longer than --seq-len {seq_len}, the sequences calibration "
                                f"windows are cut from; lower --calib-seq-len or raise --seq-len.")
        return given
    if default is not None and default > seq_len:
        print(f"note: calibration windows of {seq_len} tokens (--seq-len), shorter than the default --calib-seq-len "
              f"{default}.")
        return seq_len
    return default


def cmd_quantize(args: argparse.Namespace) -> int:
    from compress import api
    from compress.quantization import QuantConfig, TernaryConfig

    given = {"embeddings": None if args.embeddings == "none" else args.embeddings} if args.embeddings else {}
    if args.embedding_group_size is not None:
        given["embedding_group_size"] = args.embedding_group_size
    if args.embedding_rounding is not None:
        given["embedding_rounding"] = args.embedding_rounding
    # passed on only when given: QuantConfig holds the default
    for name in ("calibration_sequences", "calibration_dtype", "static_groups", "code_sweeps"):
        if hasattr(args, name):
            given[name] = getattr(args, name)
    target = {k: getattr(args, k) for k in ("target_size", "target_metric", "target_sequences") if getattr(args, k) is not None}
    if args.target_formats:
        target["target_formats"] = tuple(args.target_formats)
    if args.method is None and args.target_size is None:
        raise CompressError("quantize needs --method int4, int3 or ternary, or --target-size SIZE (such as 80MiB) to choose "
                            "each module's format within a size budget.")
    if args.target_size is None and len(target):
        raise CompressError(f"--{next(iter(target)).replace('_', '-')} only applies with --target-size; add "
                            f"--target-size SIZE (such as 80MiB) or drop it.")
    from compress.quantization.config import SHORTHANDS

    config = QuantConfig(**SHORTHANDS[args.method or "int4"], group_size=args.group_size, symmetric=not args.asymmetric,
                         gptq=args.gptq, scale=args.scale, activations="a8" if args.a8 else "a16",
                         act_order=args.act_order, clip_search=args.clip_search, gptaq=args.gptaq,
                         group_refit=args.group_refit,
                         zero_point=args.zero_point, **given, **target)
    bits = 2.2 if isinstance(config, TernaryConfig) else config.bits + 0.5  # packed weights and scales, rounded up
    budget = config.target_size is not None
    if not budget:
        return _compress_and_save(args, config.needs_data, lambda model, data: api.quantize(model, config, data=data),
                                  bits)
    from compress.quantization.budget import check_budget

    return _compress_and_save(args, True, lambda model, data: api.quantize(model, config, data=data, dtype=args.dtype),
                              16.0, precheck=lambda model: check_budget(model, config, args.dtype),  # before any text
                              budget=True)


def cmd_recover(args: argparse.Namespace) -> int:
    import compress
    from compress import api
    from compress.io.outputs import check_location, estimated_bytes
    from compress.recovery import RecoverConfig, is_main_process

    if args.hidden_weight and not args.teacher:
        raise CompressError("--hidden-weight matches a teacher's hidden states; add --teacher MODEL or drop --hidden-weight.")
    out = Path(args.output).expanduser().resolve()
    state = _state_dir(args, out)
    config = RecoverConfig(steps=args.steps, tokens=args.tokens, batch_size=args.batch_size, lr=args.lr,
                           lora_rank=args.lora, hidden_weight=args.hidden_weight, resume=True, seed=args.seed, distributed=args.distributed,
                           output_dir=str(state))
    if not args.resume:
        _check_output(args)
    model, tokenizer = compress.load_model(args.model)
    needed = 4 * estimated_bytes(model)  # the checkpoint, and the training state: weights and AdamW's two moments
    if args.resume:
        check_location(out, needed)
    else:
        _check_output(args, needed)
    if args.force and is_main_process():
        _start_over(state)
    teacher = compress.load_model(args.teacher).model if args.teacher else None
    data = _load_data(args, tokenizer, teacher if teacher is not None else model)
    report = api.recover(model, teacher, data, config)
    if is_main_process():  # under torchrun only rank 0 writes
        print(report)
        print(f"checkpoint written to {compress.save(model, out, tokenizer, overwrite=args.force or args.resume, dtype=args.dtype)}")
        _start_over(state)  # only a resume needs the training checkpoints, as in `run`
        print(f"training log kept in {state}")
    return 0


TRAIN_STATE_SUFFIX = ".train-state"


def _state_dir(args: argparse.Namespace, out: Path) -> Path:
    """--state-dir, or OUTPUT.train-state beside OUTPUT (an interrupted run of an earlier version left its
    checkpoints in the hidden .OUTPUT.train-state: that one is used while it exists alone)."""
    if args.state_dir:
        state = Path(args.state_dir).expanduser().resolve()
    else:
        state = out.parent / f"{out.name}{TRAIN_STATE_SUFFIX}"
        legacy = out.parent / f".{out.name}{TRAIN_STATE_SUFFIX}"
        if legacy.is_dir() and not state.exists():
            print(f"note: continuing from the training state an earlier version left in {legacy}.")
            state = legacy
    if state == out or out in state.parents:
        raise CompressError(f"--state-dir '{state}' lies inside the output directory '{out}', which is written whole "
                            f"at the end; put the training state beside it (the default is '{out}{TRAIN_STATE_SUFFIX}').")
    if state.exists() and not state.is_dir():
        raise CompressError(f"--state-dir '{state}' is a file; give a directory for the training checkpoints.")
    return state


def _start_over(state: Path) -> None:
    """Delete the training checkpoints in ``state`` (nothing else: --state-dir may be a folder the user shares)."""
    import shutil

    from compress.recovery.state import checkpoint_root

    shutil.rmtree(checkpoint_root(state), ignore_errors=True)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    import torch

    import compress
    from compress.sensitivity import SensitivityConfig, measure_sensitivity
    from compress.sensitivity.overrides import check_override_args

    config = SensitivityConfig(metric=args.metric, formats=tuple(args.formats or SensitivityConfig.formats),
                               prune_fraction=args.prune_fraction, importance=args.importance,
                               sequences=args.sequences, batch_size=args.batch_size, seed=args.seed)
    from compress.machine import check_device

    for path in (args.heatmap, args.json, args.overrides):  # fail before the expensive work, not after it
        _check_file_output(path, args.force)
    if args.overrides:
        check_override_args(config.formats, args.target, args.keep, args.promote_to, args.protect)
    device = check_device(args.device)
    model, tokenizer = compress.load_model(args.model, dtype=getattr(torch, args.dtype), device=device)
    data = _load_data(args, tokenizer, model)
    report = measure_sensitivity(model, data, config, name=args.model)
    print(report.table(top=args.top, rank_by=args.target if args.overrides else None))
    print(f"heat map written to {report.heatmap(_parent_made(args.heatmap))}")
    if args.json:
        report.to_json(_parent_made(args.json))
        print(f"report written to {args.json}")
    if args.overrides:
        path = report.write_override_map(_parent_made(args.overrides), args.target, args.keep, args.promote_to, args.protect)
        data = report.override_map(args.target, args.keep, args.promote_to, args.protect)
        print(f"override map written to {path}: {len(data['quantize']['overrides'])} override(s), "
              f"modules_to_not_convert {data['quantize']['modules_to_not_convert']}, "
              f"protect_layers {data['prune']['protect_layers']}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from compress.pipeline import builtin_recipes, load_recipe

    if args.recipe == "list":
        for name, description in builtin_recipes().items():
            print(f"{name:12s} {description}")
        return 0
    recipe = load_recipe(args.recipe)
    if args.show:
        print(recipe.to_yaml(), end="")
        return 0
    if args.check:
        from compress.pipeline import check

        report = check(args.model, recipe, data=args.data)
        print(report.summary())
        report.raise_if_problems()
        return 0
    from compress.pipeline import run

    if args.eval_data:
        import dataclasses

        recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, data=tuple(args.eval_data)))
    run(args.model, recipe, args.output, data=args.data, overwrite=args.force, progress=not args.quiet)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    import compress
    from compress.io.exports import export
    from compress.io.outputs import estimated_bytes
    from compress.machine import check_device
    from compress.sizes import count_parameters

    device = check_device(args.device)
    _check_output(args)
    from compress.io.storage import stored_dtype

    stored = stored_dtype(args.dtype, args.format)
    model, tokenizer = compress.load_model(args.model, device=device)
    needed = estimated_bytes(model)
    if args.format == "hf":  # packed weights come out as floats
        needed = max(needed, count_parameters(model)[0] * torch.finfo(stored).bits // 8)
    _check_output(args, needed)
    report = export(model, tokenizer, args.output, args.format, overwrite=args.force, gguf_type=args.gguf_type,
                    verify=not args.no_verify, dtype=stored)
    print(report.table())
    return 0


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"  # beside compress/ in a checkout only


def cmd_bench(args: argparse.Namespace) -> int:
    script = {"kernels": "kernel_matmul", "model": "model_decode"}[args.what]
    return _benchmark_script(script).main(args.args)


def _benchmark_script(name: str):
    """Load benchmarks/<name>.py from the source checkout (benchmarks/ is not installed: checkout only)."""
    import importlib.util

    path = BENCHMARKS / f"{name}.py"
    if not path.is_file():
        raise CompressError(f"compress-lm bench runs the benchmarks of a source checkout, and {path} is not there "
                            f"(a wheel does not install benchmarks/); run it from a clone of compress-lm "
                            f"(pip install -e .).")
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

    from compress.machine import check_device

    _check_file_output(args.json, force=True)
    device = check_device(args.device)
    dtype = getattr(torch, args.dtype)
    task_cfg = runner = None
    if args.tasks is None and (args.include_path or args.limit is not None or args.num_fewshot is not None):
        raise CompressError("--include-path, --limit and --num-fewshot apply to lm-eval tasks; add --tasks T1,T2.")
    if args.tasks is not None:
        from compress.tasks import TaskConfig, TaskRunner

        task_cfg = TaskConfig(include_path=args.include_path, limit=args.limit, num_fewshot=args.num_fewshot,
                              batch_size=args.batch_size, seed=args.seed)
        runner = TaskRunner(args.tasks, task_cfg)  # lm-eval installed, names known, data readable: before loading any model
    model, tokenizer = compress.load_model(args.model, dtype=dtype, device=device)
    _fit_context(args, model)
    text_cfg = TextConfig(seq_len=args.seq_len, seed=args.seed)
    eval_cfg = EvalConfig(
        batch_size=args.batch_size,
        max_sequences=args.max_sequences,
        mask_token_id=getattr(tokenizer, "mask_token_id", None),
    )
    reference = None
    if args.reference:
        reference, _ = compress.load_model(args.reference, dtype=dtype, device=device)
    source = args.data
    if source and len(source) == 1 and source[0] in ("shakespeare", "news") and not Path(source[0]).exists():
        source = source[0]  # a built-in text by name (compress.load_text accepts both)
    if runner is not None:  # lm-eval tasks, with perplexity on --data when it is given
        data = compress.load_text(source, tokenizer, text_cfg) if source else None
        report = compress.evaluate(model, data, reference, eval_cfg, name=args.model,
                                   reference_name=args.reference or "reference", tasks=runner, tokenizer=tokenizer)
    else:
        from compress.data import evaluation_domains
        from compress.eval import evaluate_domains
        from compress.generated import GenerateConfig

        generate = GenerateConfig(tokens=args.generate_tokens) if args.generate_tokens is not None else None
        # generated text comes from the uncompressed model: the reference when there is one
        domains = evaluation_domains(tokenizer, source, text_cfg, extra=args.eval_data,
                                     model=reference if reference is not None else model, generate=generate)
        report = evaluate_domains(model, domains, reference, eval_cfg, name=args.model,
                                  reference_name=args.reference or "reference")
    print(report.table())
    if args.json:
        print(f"report written to {report.save_json(_parent_made(args.json))}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from compress.io.audit import verify_directory

    for line in verify_directory(args.directory):
        print(line)
    return 0


MAX_MESSAGE = 1000  # characters of an error printed; values quoted in it are cut long before this


def _short(err: BaseException) -> str:
    return shorten(" ".join(str(err).split()), MAX_MESSAGE)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _seq_len_given(args)
    try:
        return args.func(args)
    except (CompressError, NotImplementedError) as err:
        print(f"compress-lm {args.command}: {_short(err)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the operating system refused a read or write the checks before could not foresee
        where = f" '{err.filename}'" if err.filename else ""
        print(f"compress-lm {args.command}: could not read or write{where} ({err.strerror or type(err).__name__}); "
              f"free space or fix the path or permissions and run again.", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
