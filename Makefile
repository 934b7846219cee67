# Everyday commands. `make install` once, then `make demo`, `make test`, `make bench`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install test lint format demo bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: install
	$(BIN)/coachpipe demo

bench: install
	$(BIN)/python -m devtools.bench all

bench-quick: install
	$(BIN)/python -m devtools.bench all --quick

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache .hypothesis
