# Each target sets itself up: a local virtual environment in .venv with the package installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNNER := $(BIN)/python -m gsfh_utils.lab.runner
PROFILE ?= full
SPEC ?= sweeps/quick.yaml
# MathJax 3 for the book, pinned in package-lock.json (npm ci installs exactly that).
MATHJAX := node_modules/mathjax/es5/tex-chtml.js

.PHONY: install reproduce test test-unit test-thorough mutate notebook lab lint benchmark sweep book verify \
	clean

install: $(STAMP) $(MATHJAX)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test,book]'
	touch $(STAMP)

$(MATHJAX): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $(MATHJAX)

## Execute every notebook at full size, promote passing runs into figures/ and results/, rewrite
## the README's claims table, print every claim.
reproduce: $(STAMP)
	$(RUNNER) --profile full --update-readme

## Execute every notebook again into a temporary folder (nothing promoted) and compare each claim
## with the committed results/ within its tolerance; prints what moved (gsfh_utils/lab/verify.py).
## ARGS="--runs-dir build/runs" keeps the runs (the book can then render them).
verify: $(STAMP)
	$(BIN)/python -m gsfh_utils.lab.verify --profile $(PROFILE) $(ARGS)

## Unit and property tests, every notebook at the small profile, the book read in Chromium.
test: $(STAMP) $(MATHJAX)
	$(BIN)/python -m pytest

## Unit and property tests only (no notebook, no browser, no test that waits for other
## processes), on every core (pytest-xdist) and without coverage: the quick check while editing.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -n auto -m "not notebook and not browser and not integration" --no-cov

## Unit and property tests only, with ten times more (randomised) hypothesis examples.
test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -m "not notebook"

## Mutation testing of the algorithm modules with mutmut (configuration in pyproject.toml), one
## module at a time at low priority; rewrites the scores and the survivors' table of
## benchmarks/mutation.md, each survivor with its reason from benchmarks/mutation_reasons/ (those
## without one are listed at the end). Results are kept in mutants/ and reused.
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
	$(BIN)/python benchmarks/mutation_summary.py --write benchmarks/mutation.md --unexplained

## The companion book from the executed notebooks of the last run (build/runs), offline:
## build/book/html/index.html.
book: $(STAMP) $(MATHJAX)
	$(BIN)/python book/build.py

## One notebook: make notebook NB=03 [PROFILE=small] [ARGS="-p batch_size 50 --explore"]
notebook: $(STAMP)
	$(RUNNER) -n $(NB) --profile $(PROFILE) $(ARGS)

## A sweep on Dask: make sweep [SPEC=sweeps/offline.yaml] [ARGS="--scheduler tcp://127.0.0.1:8786"]
sweep: $(STAMP)
	$(BIN)/python -m gsfh_utils.sweep $(SPEC) $(ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

lint: $(STAMP)
	$(BIN)/ruff check gsfh_utils tests benchmarks notebooks book

## Speed ratios against plain baselines, measured in the same run (see benchmarks/README.md).
benchmark: $(STAMP)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf build node_modules .pytest_cache .hypothesis .ruff_cache .coverage mutants
