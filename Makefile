# fsmis-bench developer and user entry points. Everything runs inside $(VENV).
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONHASHSEED := 0

.PHONY: install lock demo test test-slow lint format clean bench leaderboard regression update-baselines gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(STAMP)

## Every dependency but torch at the versions the tests and the regression baselines last passed with
## (constraints.txt, written by `make lock`); CONSTRAINTS= installs the newest releases instead.
CONSTRAINTS ?= constraints.txt
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $(STAMP)

## Pin the installed environment (torch excluded: TORCH_SPEC chooses the build) into constraints.txt.
lock: | $(BIN)/python
	( echo "# pip constraints: the environment the tests and regression baselines last passed with (make lock)"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(torch|nvidia-|triton)[-_=]' ) > constraints.txt

## The main job on the embedded synthetic default (no download): SSL-ALPNet, fold 0, cpu profile.
demo: $(STAMP)
	$(BIN)/fsmis-bench run --method alpnet --fold 0

## Default test run (< 15 minutes on 2 CPU cores); slow tests are in test-slow.
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## Sweep results ($(RESULTS)/results.csv, see `fsmis-bench sweep`) -> $(LEADERBOARDS)/: CSV tables per
## (dataset, setting, shots), README.md with the Markdown tables, PNG plots; published numbers beside.
## The committed CPU leaderboards: make leaderboard RESULTS="results/chaos_cpu results/chaos_cpu_prior results/chaos_cpu_prior_select results/cross_synthetic results/cross_synthetic_prior"
RESULTS ?= results
LEADERBOARDS ?= leaderboards
leaderboard: $(STAMP)
	$(BIN)/fsmis-bench leaderboard --results $(RESULTS) --out $(LEADERBOARDS) --published leaderboards/published.csv

## CI regression guard: every method x synthetic_{mri,ct} x fold 0 x settings 1, 2 at the `ci` profile, per-organ
## Dice compared with benchmark/baselines/ci_regression.json: within 0.005 in the environment the fixture records,
## else within the seed-spread tolerances (the first line of the report says which, and why).
## Fresh results each time (a stale store would hide a regression); update-baselines reruns over 3 seeds and
## records the environment. Partial refresh (regression update --methods) and adopting an environment without
## rerunning (regression stamp): README, "Regression failures and fixture refreshes".
regression: $(STAMP)
	rm -rf results/ci_regression
	$(BIN)/fsmis-bench sweep benchmark/sweeps/ci_regression.yaml
	$(BIN)/fsmis-bench regression check --results results/ci_regression

update-baselines: $(STAMP)
	rm -rf results/ci_regression_seeds
	$(BIN)/fsmis-bench sweep benchmark/sweeps/ci_regression_seeds.yaml
	$(BIN)/fsmis-bench regression update --results results/ci_regression_seeds --check-seed 0

lint: $(STAMP)
	$(BIN)/ruff check fsmis_bench tests benchmark
	$(BIN)/ruff format --check fsmis_bench tests benchmark

format:
	$(BIN)/ruff format fsmis_bench tests benchmark
	$(BIN)/ruff check --fix fsmis_bench tests benchmark

clean:
	rm -rf runs .pytest_cache .ruff_cache

## Performance harness: throughput, FLOP utilisation, data wait, batched vs looped EP1, memory, metrics vs MONAI.
bench: $(STAMP)
	$(BIN)/python benchmark/perf.py

## GPU readiness (README, "Dry run and GPU check"): every method's paper profile at full size with random
## weights, 20 training steps and one EP1 test case each, then a two-slot sweep on GPU 0 (--devices 0,0);
## writes gpu_check.json and gpu_check.md into $(OUT) (the environment's OUT when set). DEVICE=cpu: the same
## at smoke sizes.
## On a machine whose python3 already has torch (a lent GPU box without a registry):
##   make gpu-check STAMP= BIN=$$(dirname $$(command -v python3)) GPU_CHECK_ARGS=--work=/tmp/gpu-check
DEVICE ?= cuda
OUT ?= gpu_check
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(BIN)/python benchmark/gpu_check.py --device $(DEVICE) --out $(OUT) $(GPU_CHECK_ARGS)
