# fsmis-bench developer and user entry points. Everything runs inside $(VENV).
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export PYTHONHASHSEED := 0

.PHONY: install demo test test-slow lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"

## The main job on the embedded synthetic default (no download): SSL-ALPNet, fold 0, cpu profile.
demo: install
	$(BIN)/fsmis-bench run --method alpnet --fold 0

## Default test run (< 15 minutes on 2 CPU cores); slow tests are in test-slow.
test:
	$(BIN)/python -m pytest -q

test-slow:
	$(BIN)/python -m pytest -q -m slow

lint:
	$(BIN)/ruff check fsmis_bench tests benchmark
	$(BIN)/ruff format --check fsmis_bench tests benchmark

format:
	$(BIN)/ruff format fsmis_bench tests benchmark
	$(BIN)/ruff check --fix fsmis_bench tests benchmark

clean:
	rm -rf runs .pytest_cache .ruff_cache
