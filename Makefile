# The two commands of the README. Each creates the project's environment (.venv) when it is missing.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.ptx-installed
PRESET ?= demo

.PHONY: run test lint env browser

run: $(STAMP)
	$(VENV)/bin/ptx run --preset $(PRESET)

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -n auto --dist worksteal

# The browser test's headless Chromium (Debian's packages), installed when missing and possible;
# without it that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && \
	        apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; }; } || \
	  echo "no chromium: the browser test (tests/test_browser.py) will skip"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check ptx_utils tests

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[dev]'
	touch $(STAMP)
