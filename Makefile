# mfm-tui developer tasks. Every target sets up .venv first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: setup run test lint fmt snapshots bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,lint]'
	touch $@

setup: $(VENV)/.installed

## The TUI on the embedded filesystem store, with the demo operations.
run: setup
	$(VENV)/bin/mfm tui

## The whole test suite (unit, property, crash, CLI, snapshot tests).
test: setup
	$(PY) -m pytest -n 2 -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict engine mfm_tui
	$(VENV)/bin/lint-imports

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Regenerate snapshot SVGs (review every changed SVG before committing).
snapshots: setup
	$(PY) -m pytest tests/tui --snapshot-update -q

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
