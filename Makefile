# The newcomer's path: `make run PROMPT="..."` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= city during a rainy night
# CPU only? `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` installs the CPU builds of torch and
# torchvision (spandrel needs it; from the same index, so pip keeps the CPU torch) first,
# without the 4.3 GB of CUDA libraries and triton that the default wheels bring.
TORCH_INDEX ?=

.PHONY: install run demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install --quiet torch torchvision --index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/vqclip "$(PROMPT)"

# No network at all: the shapes world's small trained models ship inside the package (vqclip/shapes/).
demo: $(STAMP)
	VQCLIP_OFFLINE=1 HF_HUB_OFFLINE=1 $(BIN)/vqclip "a red star on a white background" --vqgan shapes_f8 \
		--clip shapes-a --size 128 --steps 100 --seed 1 -o demo.png --overwrite

lint: $(STAMP)
	$(BIN)/ruff check vqclip tests $(wildcard benchmarks)
	$(BIN)/ruff format --check vqclip tests $(wildcard benchmarks)

format: $(STAMP)
	$(BIN)/ruff check --fix vqclip tests $(wildcard benchmarks)
	$(BIN)/ruff format vqclip tests $(wildcard benchmarks)

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal

bench: $(STAMP)
	bash benchmarks/standard.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
