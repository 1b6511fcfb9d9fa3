# Each target sets itself up: a local virtual environment in .venv with the package installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNNER := $(BIN)/python -m gsfh_utils.lab.runner
PROFILE ?= full
SPEC ?= sweeps/quick.yaml

.PHONY: install reproduce test notebook lab lint benchmark sweep clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

## Execute every notebook at full size, promote passing runs into figures/ and results/, rewrite
## the README's claims table, print every claim.
reproduce: $(STAMP)
	$(RUNNER) --profile full --update-readme

## Unit and property tests, plus every notebook at the small profile.
test: $(STAMP)
	$(BIN)/python -m pytest

## One notebook: make notebook NB=03 [PROFILE=small] [ARGS="-p batch_size 50 --explore"]
notebook: $(STAMP)
	$(RUNNER) -n $(NB) --profile $(PROFILE) $(ARGS)

## A sweep on Dask: make sweep [SPEC=sweeps/offline.yaml] [ARGS="--scheduler tcp://127.0.0.1:8786"]
sweep: $(STAMP)
	$(BIN)/python -m gsfh_utils.sweep $(SPEC) $(ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

lint: $(STAMP)
	$(BIN)/ruff check gsfh_utils tests benchmarks notebooks

## Speed ratios against plain baselines, measured in the same run (see benchmarks/README.md).
benchmark: $(STAMP)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf build .pytest_cache .hypothesis .ruff_cache
