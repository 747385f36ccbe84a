# Parley's everyday commands. `make test` is what CI runs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install run test-deps test lint bench

install:
	$(PIP) install -q -e .

run: install
	parley serve

test-deps:
	bash scripts/test-deps.sh
	$(PIP) install -q -e '.[test]'

test: test-deps
	$(PYTHON) -m pytest -q

lint: test-deps
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	lint-imports

bench: test-deps
	$(PYTHON) bench/ingest.py
