# Everything a fresh clone needs: `make serve` runs the node, `make test` runs the tests.
# The virtual environment is (re)built whenever pyproject.toml changes.
#   make fmt        rewrite imports and formatting in place (ruff)
#   make lint       ruff check, ruff format --check, mypy: what CI runs first
#   make test-fast  the tests not marked slow, for the edit-run loop
#   make test       every test (PYTEST_ARGS="-k name" narrows it)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast fmt lint check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/messenger serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

fmt: $(STAMP)
	$(BIN)/ruff check --fix --select I .
	$(BIN)/ruff format .

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
