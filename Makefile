# The two commands of the README. Each creates the project's environment (.venv) when it is missing.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.ptx-installed
PRESET ?= demo

.PHONY: run test lint env

run: $(STAMP)
	$(VENV)/bin/ptx run --preset $(PRESET)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -n auto --dist worksteal

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check ptx_utils tests

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[dev]'
	touch $(STAMP)
