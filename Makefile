# Two commands set everything up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all bench clean

setup: $(STAMP)

# torch is installed first and pinned so the local CPU wheel is used (any other spec pulls CUDA).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/python -m s3sim.experiments.default

test: setup
	$(BIN)/python -m pytest -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -m ""

bench: setup
	$(BIN)/python -m s3sim.bench

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
