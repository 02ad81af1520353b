# The newcomer's path: `make run PROMPT="..."` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= city during a rainy night

.PHONY: install run test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/vqclip "$(PROMPT)"

lint: $(STAMP)
	$(BIN)/ruff check vqclip tests $(wildcard benchmarks)
	$(BIN)/ruff format --check vqclip tests $(wildcard benchmarks)

format: $(STAMP)
	$(BIN)/ruff check --fix vqclip tests $(wildcard benchmarks)
	$(BIN)/ruff format vqclip tests $(wildcard benchmarks)

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	bash benchmarks/standard.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
