#!/usr/bin/env bash
# Every GPU measurement of compress-lm, unattended, in one command:
#
#   bash benchmarks/gpu_all.sh                          # all stages; results in benchmarks/results/
#   bash benchmarks/gpu_all.sh --out DIR model pytest   # some stages; results in DIR
#   bash benchmarks/gpu_all.sh --dry-run                # any machine: check every command line, measure nothing
#   bash benchmarks/gpu_all.sh --cap tune=900 tune      # one stage with a longer cap (seconds)
#
# For a machine with one CUDA GPU (an H100 here) and torch, triton and transformers
# preinstalled; it installs nothing and needs no network.  Stages, in this order, each
# under its own time cap, all together within --budget minutes (default 25):
#
#   tune     benchmarks/kernels_tune.py --quick, one shape per call so that a cut-off keeps the
#            calls done (6 minutes may not cover them all: the rest keep heuristic configs);
#            winners merge into compress/kernels/configs/<gpu>.json, which every later stage reads,
#            and a copy goes to the results folder
#   kernels  benchmarks/kernel_matmul.py --quick: every shape at batch 1, 16 and 2048 against cuBLAS
#   model    benchmarks/model_decode.py: decode and prefill tokens/s of SmolLM2-135M and a
#            1B-class model, dense bf16 vs int4 / ternary, CUDA graphs captured by hand
#   pytest   pytest -m gpu on the test files that hold GPU tests
#   compile  benchmarks/model_decode.py --graphs compile: the 1B-class model at batch 1
#            through torch.compile(mode="reduce-overhead"), if time is left (optional)
#
# Everything printed also goes to DIR/gpu_all.log.  Exit status: 0 when every stage
# finished, 1 when one failed or ran out of time (the others still run), 2 without a GPU.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PY="${PYTHON:-python3}"
[[ "$PY" == */* ]] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # it is also run from other folders
OUT="$REPO/benchmarks/results"
BUDGET_MIN=25
DRY_RUN=0
STAGES=()
ALL_STAGES=(tune kernels model pytest compile)
# seconds each stage may take at most (the overall budget can cut them shorter)
declare -A CAP=([tune]=360 [kernels]=480 [model]=420 [pytest]=300 [compile]=300)
MIN_STAGE_S=90  # a stage with less time than this left is skipped rather than started

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --out) OUT="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
        --budget) BUDGET_MIN="$2"; shift 2
            [[ "$BUDGET_MIN" =~ ^[0-9]+$ ]] || { echo "gpu_all.sh: --budget takes whole minutes, got '$BUDGET_MIN'." >&2; exit 2; } ;;
        --cap) [[ "${2:-}" =~ ^(tune|kernels|model|pytest|compile)=[0-9]+$ ]] \
                   || { echo "gpu_all.sh: --cap takes STAGE=SECONDS with a stage of ${ALL_STAGES[*]}, got '${2:-}'." >&2; exit 2; }
            CAP[${2%%=*}]="${2#*=}"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        tune|kernels|model|pytest|compile) STAGES+=("$1"); shift ;;
        *) echo "gpu_all.sh: unknown argument '$1'; stages are ${ALL_STAGES[*]}, options --out DIR, --budget MIN, --cap STAGE=SECONDS, --dry-run." >&2; exit 2 ;;
    esac
done
((${#STAGES[@]})) || STAGES=("${ALL_STAGES[@]}")
mkdir -p "$OUT"
cd "$REPO"
export PYTHONUNBUFFERED=1

if ((DRY_RUN)); then
    export CUDA_VISIBLE_DEVICES=""  # every script must then stop at its GPU check, after parsing its arguments
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_all.sh needs a CUDA GPU and $PY sees none; run it on the GPU machine, or pass --dry-run to check the command lines." >&2
    exit 2
fi
exec > >(tee -a "$OUT/gpu_all.log") 2>&1

# --------------------------------------------------------------------------- importing this checkout

# If this checkout is not what `import compress` finds, a bootstrap module loads compress
# from it by path (no install; compress.kernels comes with it as a subpackage).
BOOT_DIR=""
installed="$(cd / && "$PY" -c "import os, compress.kernels as k; print(os.path.realpath(k.__file__))" 2>/dev/null)"
if [[ "$installed" != "$REPO/compress/kernels/__init__.py" ]]; then
    BOOT_DIR="$(mktemp -d)"
    trap 'rm -rf "$BOOT_DIR"' EXIT
    cat >"$BOOT_DIR/compress_checkout.py" <<'EOF'
"""Import compress-lm from a source checkout without installing it (written by benchmarks/gpu_all.sh)."""
import importlib.util
import os
import sys


def _load(name, folder):
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_repo = os.environ["COMPRESS_CHECKOUT"]
_load("compress", os.path.join(_repo, "compress"))
EOF
    export COMPRESS_CHECKOUT="$REPO"
    echo "compress-lm is imported from this checkout ($REPO) through $BOOT_DIR/compress_checkout.py"
fi

# How to run a script and pytest: plain, or through the bootstrap (then a script keeps its own
# folder first on sys.path, as `python script.py` does).  Arrays, not functions, so that
# `timeout` can run them.
RUNNER='import os, runpy, sys
import compress_checkout
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")'
if [[ -n "$BOOT_DIR" ]]; then
    BOOT_ENV=(env "PYTHONPATH=$BOOT_DIR${PYTHONPATH:+:$PYTHONPATH}")
    PY_SCRIPT=("${BOOT_ENV[@]}" "$PY" -c "$RUNNER")
    PY_TEST=("${BOOT_ENV[@]}" "$PY" -m pytest -p compress_checkout)
else
    PY_SCRIPT=("$PY")
    PY_TEST=("$PY" -m pytest)
fi

# --------------------------------------------------------------------------- time

START=$SECONDS
BUDGET_S=$((BUDGET_MIN * 60))
left() { echo $((BUDGET_S - (SECONDS - START))); }
FAILED=()

# run_capped SECONDS CMD...: run CMD, stopped after SECONDS.  In a dry run (no GPU visible)
# a benchmark script must stop at its GPU check, which shows its arguments parsed.
EXPECT_GPU_CHECK=1
run_capped() {
    local cap=$1; shift
    local shown=() word
    for word in "$@"; do
        [[ "$word" == "$RUNNER" ]] && word="<run-from-checkout>"
        [[ "$word" == env || "$word" == PYTHONPATH=* ]] || shown+=("$word")
    done
    echo "+ ${shown[*]} (cap ${cap}s)"
    local out rc
    out="$(mktemp)"
    timeout --signal=TERM --kill-after=30 "$cap" "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    if ((DRY_RUN && EXPECT_GPU_CHECK)); then
        if grep -q "needs a CUDA GPU" "$out"; then
            echo "  ok: arguments parsed, stopped at the GPU check"
            rc=0
        else
            rc=$((rc ? rc : 1))
        fi
    fi
    rm -f "$out"
    ((rc == 124 || rc == 137)) && echo "  cut off after ${cap}s"
    return "$rc"
}

stage_cap() {  # the stage's own cap, or what is left of the budget if less
    local cap=${CAP[$1]} rest
    rest=$(left)
    ((rest < cap)) && cap=$rest
    echo "$cap"
}

# --------------------------------------------------------------------------- stages

gpu_slug() {
    "$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))" 2>/dev/null \
        || echo "no-gpu"
}

stage_tune() {
    # One shape per call (a call saves its winners when it ends, so a cut-off loses one shape),
    # most wanted first: the issue's target shapes, the 1B-class model's and SmolLM2's decode
    # shapes (batch 1 and 16), then prefill (M = batch x 128 prompt tokens), then W1.58A8.
    local calls=() shape
    for shape in 4096x4096 8192x8192 2048x2048 512x2048 8192x2048 2048x8192 128256x2048 \
                 576x576 192x576 1536x576 576x1536 49152x576; do
        calls+=("--formats int4 ternary --batches 1 16 --shapes $shape")
    done
    for shape in 4096x4096 8192x8192 2048x2048 8192x2048 2048x8192; do
        calls+=("--formats int4 ternary --batches 128 2048 --shapes $shape")
    done
    calls+=("--formats ternary_a8 --batches 1 16 2048 --shapes 4096x4096 8192x8192")
    ((DRY_RUN)) && calls=("${calls[0]}" "${calls[12]}" "${calls[-1]}")  # one of each kind
    local deadline=$((SECONDS + $(stage_cap tune))) status=0 call rest rc
    for call in "${calls[@]}"; do
        rest=$((deadline - SECONDS))
        if ((rest < 30)); then
            echo "  tuning time is up; the remaining shapes keep the heuristic configs"
            break
        fi
        # shellcheck disable=SC2086  # the call's words are separate arguments
        run_capped "$rest" "${PY_SCRIPT[@]}" benchmarks/kernels_tune.py --quick $call
        rc=$?
        ((rc == 0 || rc == 124 || rc == 137)) || status=1  # a cut-off is the budget at work, not a failure
    done
    local tuned="compress/kernels/configs/$(gpu_slug).json"
    [[ -f "$tuned" ]] && cp "$tuned" "$OUT/tuned-configs-$(basename "$tuned")" && echo "  tuned configs: $tuned"
    return $status
}

stage_kernels() {
    run_capped "$(stage_cap kernels)" "${PY_SCRIPT[@]}" benchmarks/kernel_matmul.py --quick --out-dir "$OUT"
}

stage_model() {
    run_capped "$(stage_cap model)" "${PY_SCRIPT[@]}" benchmarks/model_decode.py --out-dir "$OUT"
}

stage_pytest() {
    local files
    mapfile -t files < <(grep -rlE "pytest\.mark\.gpu|mark\.gpu\b" tests --include='test_*.py' | sort)
    if ((DRY_RUN)); then
        local EXPECT_GPU_CHECK=0
        run_capped 300 "${PY_TEST[@]}" -qq -m gpu --collect-only -p no:cacheprovider "${files[@]}"
        return
    fi
    run_capped "$(stage_cap pytest)" "${PY_TEST[@]}" -q -m gpu -p no:cacheprovider -rs "${files[@]}"
}

stage_compile() {
    run_capped "$(stage_cap compile)" "${PY_SCRIPT[@]}" benchmarks/model_decode.py --graphs compile --models 1b-random \
        --batches 1 --variants int4 ternary --reps 3 --out-dir "$OUT" --no-plot
}

echo "gpu_all.sh $(date -u +%FT%TZ): stages ${STAGES[*]}, budget ${BUDGET_MIN} min, results in $OUT"
((DRY_RUN)) || nvidia-smi -L 2>/dev/null || true
"$PY" -c "import sys, torch, transformers; import triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"

for stage in "${STAGES[@]}"; do
    if ((!DRY_RUN && $(left) < MIN_STAGE_S)); then
        echo "== $stage: skipped, $(left)s of the ${BUDGET_MIN}-minute budget left"
        [[ "$stage" == compile ]] || FAILED+=("$stage (no time left)")  # compile is the optional extra
        continue
    fi
    echo "== $stage ($(( (SECONDS - START) / 60 )) min elapsed)"
    "stage_$stage" || FAILED+=("$stage")
done

echo "== done in $(( (SECONDS - START) / 60 )) min; results in $OUT:"
ls -l "$OUT"
if ((${#FAILED[@]})); then
    echo "not finished cleanly: ${FAILED[*]}"
    exit 1
fi
