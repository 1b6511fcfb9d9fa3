# Each target sets itself up: a local virtual environment in .venv with the package installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNNER := $(BIN)/python -m gsfh_utils.lab.runner
PROFILE ?= full
SPEC ?= sweeps/quick.yaml

.PHONY: install reproduce test test-thorough mutate notebook lab lint benchmark sweep clean

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

## Unit and property tests only, with ten times more (randomised) hypothesis examples.
test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -m "not notebook"

## Mutation testing of the algorithm modules with mutmut (configuration in pyproject.toml), one
## module at a time at low priority; prints the score per module and the surviving mutants
## (summarised in benchmarks/mutation.md). Results are kept in mutants/ and reused.
MUTATED_MODULES := kl_estimators online offline dpo gibbs estimation sampling instance \
	policy_optimization out_of_preference
mutate: $(STAMP)
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/python -m pip install "mutmut>=3.3,<4"
	mkdir -p build
	for module in $(MUTATED_MODULES); do \
		HYPOTHESIS_PROFILE=mutation nice -n 10 $(BIN)/mutmut run --max-children 2 \
			"gsfh_utils.$$module.*" \
			> build/mutmut-$$module.log || exit 1; \
	done
	$(BIN)/python benchmarks/mutation_summary.py

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
	rm -rf build .pytest_cache .hypothesis .ruff_cache .coverage mutants
