# mconv: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PADDLE2ONNX ?= paddle2onnx==2.1.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mconv-setup-$(TORCH_VERSION)
PYTEST_ARGS ?=
JOBS ?= 2

.PHONY: setup demo test test-fast conformance lint format bench bench-venv bench-zoo clean

setup: $(STAMP)

# Idempotent: the stamp depends on pyproject.toml, so a change of dependencies reinstalls.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Pin torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]" "torch==$(TORCH_VERSION)"
	# paddle2onnx without its dependencies: they would downgrade onnx (see README).
	$(PIP) install -q --no-deps "$(PADDLE2ONNX)"
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

# The bench-only venv for the real-world zoo (never used by the tests): torch 2.14.1 with
# torchvision, timm, transformers and ultralytics to build models from their configs,
# pnnx as the comparison baseline, and mconv itself. About 6 GB.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.mconv-bench-setup
bench-venv: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BENCH_VENV)/bin/python -m pip install -q timm transformers ultralytics onnxscript pnnx -e ".[ncnn,openvino]" "torch==2.14.1" "torchvision==0.29.1"
	@touch $(BENCH_STAMP)

# Export the zoo (cached in bench/.zoo), then compare mconv's ncnn writer with pnnx on it.
bench-zoo: bench-venv
	$(BENCH_VENV)/bin/python bench/zoo_models.py
	$(BENCH_VENV)/bin/python bench/zoo_ncnn.py --control

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache demo_out
