# Each target sets itself up: a local virtual environment in .venv with the package installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install reproduce test lab lint benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

## Execute every notebook at full size, rewrite figures/ and results/, print the claims table.
reproduce: $(STAMP)
	$(BIN)/python -m gsfh_utils.runner --profile full --update-readme

## Unit and property tests, plus every notebook at the small profile.
test: $(STAMP)
	$(BIN)/python -m pytest

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

lint: $(STAMP)
	$(BIN)/ruff check gsfh_utils tests benchmarks notebooks

## Speed ratios against plain baselines, measured in the same run (see benchmarks/README.md).
benchmark: $(STAMP)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf build .pytest_cache .hypothesis .ruff_cache
