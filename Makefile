# wasserstein_attacks: `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
export WANDB_MODE ?= offline

.PHONY: help install run test test-fast test-slow wheel-smoke docs bench lint clean

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

test: test-fast wheel-smoke ## fast test tier, then the wheel installed in a fresh venv (what CI runs)

test-fast: $(STAMP) ## the fast pytest tier only (wandb disabled)
	WANDB_MODE=disabled $(PY) -m pytest -q

wheel-smoke: $(STAMP) ## build the wheel, install it in a fresh venv, run the console scripts (~1.5 min)
	PYTHON=$(PYTHON) BUILD_PYTHON=$(PY) bash scripts/wheel_smoke.sh

DOCS_STAMP := $(VENV)/.docs-stamp
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP) ## build the documentation site into site/ (mkdocs --strict)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

test-slow: $(STAMP) ## slow tier: long runs and reference-model accuracy
	WANDB_MODE=disabled $(PY) -m pytest -q -m slow

bench: $(STAMP) ## benchmarks, JSON results under benchmarks/results/
	$(PY) benchmarks/verify_speed.py
	$(PY) benchmarks/attack_speed.py
	$(PY) benchmarks/attack_strength.py
	$(PY) benchmarks/suite_ablation.py

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check wasserstein_attacks tests benchmarks

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site
