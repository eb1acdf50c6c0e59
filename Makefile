# Two commands on a fresh clone: `make demo` and `make test`; both create the environment first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
SYSTEM_PACKAGES := ffmpeg espeak-ng slurm-wlm munge

.PHONY: help install demo test test-full lint format bench system-deps system-packages clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: system-packages $(INSTALLED) ## the Debian packages where apt can install them, then .venv with the suite (editable) and its dev tools

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: install ## the whole pipeline on the embedded synthetic corpus: train stages 1-4 and Wav2Lip, evaluate, dub
	$(PY) -m lightning_modules.tasks.demo

test: install ## the default test suite (what CI runs)
	$(PY) -m pytest

test-full: install ## the default suite plus the tests marked slow
	$(PY) -m pytest -m ''

lint: install ## ruff lint and format check, and the layer contract (import-linter, pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install ## ruff format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install ## every bench/bench_*.py; copy the tables into docs/benchmarks.md
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

system-deps: ## install the Debian packages the full tests use (ffmpeg, espeak-ng, slurm-wlm, munge); fails without apt
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "system packages present: $(SYSTEM_PACKAGES)"; else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "installing with apt-get: $$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; fi

# Part of `make install`: the same packages where apt-get can be run (root, or sudo without a password);
# elsewhere it says what is missing and goes on (the suite has fallbacks; tests that need a package skip,
# naming it).
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  $(MAKE) --no-print-directory system-deps; \
	else echo "note: cannot install the Debian packages$$(echo " $$missing" | tr '\n' ' ')here (no apt-get, or no root / sudo): the demo runs without them; the tests that need one skip, naming it"; fi

clean: ## remove run outputs and caches (not data/ and not .venv)
	rm -rf logs outputs multirun .pytest_cache .ruff_cache
