# findlit developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.findlit-installed

# The torch/torchvision pair installed before the package. These are the builds this
# machine serves from disk; override (e.g. TORCH_PACKAGES="torch torchvision") for your own CUDA build.
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PACKAGES ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PACKAGES ?= torch==2.14.1 torchvision==0.29.1
endif

DEMO_DATA ?= data/demo
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: help install test test-fast demo lint format typecheck clean bench

help: ## List the commands
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_PACKAGES)
	$(BIN)/python -m pip install -e ".[dev,demo]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install findlit with its dev and demo extras (idempotent)

test: $(STAMP) ## Run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the tests not marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

.PHONY: test-slurm
test-slurm: $(STAMP) ## Start a local SLURM cluster, run the SLURM job tests (tests/slurm), stop it
	status=0; scripts/slurm/local_cluster.sh start && eval "$$(scripts/slurm/local_cluster.sh env)" && \
	FINDLIT_SLURM_TEST=1 $(BIN)/python -m pytest tests/slurm $(PYTEST_ARGS) || status=$$?; \
	scripts/slurm/local_cluster.sh stop; exit $$status

demo: $(STAMP) ## Generate the embedded default data, fit configs/demo.yaml, test its best checkpoint
	$(BIN)/findlit data synth --out $(DEMO_DATA) --train 2000 --val 200 --test 200 --size 256 --seed 0
	$(BIN)/findlit fit --config configs/demo.yaml $(DEMO_ARGS)

lint: $(STAMP) ## Ruff lint and format check, then mypy
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

typecheck: $(STAMP) ## Run mypy on the package
	$(BIN)/mypy

bench: $(STAMP) ## Run the benchmarks (scripts/bench), write bench/results.json and bench/results.md
	$(BIN)/python scripts/bench/run_all.py --readme README.md --profile $(BENCH_ARGS)

clean: ## Remove caches and build artefacts (keeps .venv and data/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
