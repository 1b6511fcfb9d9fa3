# Each target sets itself up: a local virtual environment in .venv with the package installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNNER := $(BIN)/python -m gsfh_utils.lab.runner
PROFILE ?= full
# MathJax 3 for the book, pinned in package-lock.json (npm ci installs exactly that).
MATHJAX := node_modules/mathjax/es5/tex-chtml.js

.PHONY: install reproduce test notebook lab lint benchmark book verify clean

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

## The companion book from the executed notebooks of the last run (build/runs), offline:
## build/book/html/index.html.
book: $(STAMP) $(MATHJAX)
	$(BIN)/python book/build.py

## One notebook: make notebook NB=03 [PROFILE=small] [ARGS="-p batch_size 50 --explore"]
notebook: $(STAMP)
	$(RUNNER) -n $(NB) --profile $(PROFILE) $(ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

lint: $(STAMP)
	$(BIN)/ruff check gsfh_utils tests benchmarks notebooks book

## Speed ratios against plain baselines, measured in the same run (see benchmarks/README.md).
benchmark: $(STAMP)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf build node_modules .pytest_cache .hypothesis .ruff_cache
