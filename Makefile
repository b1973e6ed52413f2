# wasserstein_attacks: `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
export WANDB_MODE ?= offline

.PHONY: help install run test test-slow bench lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU wheel, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with dev extras

run: $(STAMP) ## run the default experiment (standard MNIST model, standard suite)
	$(VENV)/bin/wattack-bench

test: $(STAMP) ## fast test tier (wandb disabled)
	WANDB_MODE=disabled $(PY) -m pytest -q

test-slow: $(STAMP) ## slow tier: long runs and reference-model accuracy
	WANDB_MODE=disabled $(PY) -m pytest -q -m slow

bench: $(STAMP) ## benchmarks, JSON results under benchmarks/results/
	$(PY) benchmarks/verify_speed.py
	$(PY) benchmarks/attack_speed.py
	$(PY) benchmarks/attack_strength.py

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check wasserstein_attacks tests benchmarks

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
