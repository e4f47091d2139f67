# mconv: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mconv-setup-$(TORCH_VERSION)
PYTEST_ARGS ?=
JOBS ?= 2

.PHONY: setup demo test test-fast conformance lint format bench clean

setup: $(STAMP)

# Idempotent: the stamp depends on pyproject.toml, so a change of dependencies reinstalls.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Pin torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]" "torch==$(TORCH_VERSION)"
	@touch $(STAMP)

demo: setup
	$(PY) -m mconv.demo

test: setup
	$(PY) -m pytest -n $(JOBS) -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -n $(JOBS) -q -m "not slow" $(PYTEST_ARGS)

conformance: setup
	$(PY) -m mconv.targets.ncnn.conformance

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) bench/passes.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache demo_out
