# zephyr — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU wheel; a looser spec installed first pulls a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,scale,qlora]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install torch (CPU) + zephyr with dev tools

demo: install ## run the whole recipe on the embedded default (toy world, tiny Mistral, CPU)
	$(VENV)/bin/zephyr demo --out runs/demo

train: install ## dSFT of the embedded default only (python train.py)
	$(PY) train.py

test: install ## run the whole test suite (unit, integration, slow, notebooks)
	$(PY) -m pytest -q

test-fast: install ## unit tests only (tests/unit)
	$(PY) -m pytest -q tests/unit

lint: install ## ruff lint + format check
	$(VENV)/bin/ruff check zephyr tests bench train.py
	$(VENV)/bin/ruff format --check zephyr tests bench train.py

format: install ## ruff format + autofix
	$(VENV)/bin/ruff format zephyr tests bench train.py
	$(VENV)/bin/ruff check --fix zephyr tests bench train.py

bench: install ## zephyr vs TRL throughput/memory side by side -> bench/results/latest.json
	$(PY) -m bench.run --out bench/results

bench-realistic: install ## the same at SmolLM2-135M dims (20 layers), + LoRA rows -> bench/results/latest_realistic.json
	$(PY) -m bench.run --shape realistic --out bench/results

gpu-check: install ## on one CUDA GPU: ~1B dSFT/dDPO x auto/fsdp/deepspeed_stage_3 -> bench/results/gpu.json, then tests/gpu
	$(PY) -m bench.gpu_check

clean: ## remove runs/, caches and build files (keeps .venv)
	rm -rf runs outputs multirun .pytest_cache .ruff_cache *.egg-info

.PHONY: help install demo train test test-fast lint format bench bench-realistic gpu-check clean
