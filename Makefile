# Two commands a new user needs: `make run` and `make test`. Both build .venv from the project's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: run test lint typecheck pytest migrate bench bench-claims bench-replicas bench-failover chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP_RUN)

DEMO_CONFIG ?= demo/scheduler.yaml

run: $(STAMP_RUN)
	mkdir -p var
	$(BIN)/python -m manager migrate --config $(DEMO_CONFIG)
	$(BIN)/python -m manager companies load demo/companies.yaml --config $(DEMO_CONFIG)
	$(BIN)/python -m manager --config $(DEMO_CONFIG)

migrate: $(STAMP_RUN)
	$(BIN)/python -m manager migrate

lint: $(STAMP_DEV)
	$(BIN)/ruff check .

typecheck: $(STAMP_DEV)
	$(BIN)/mypy

pytest: $(STAMP_DEV)
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP_DEV)
	$(BIN)/python -m bench.core

bench-claims: $(STAMP_DEV)
	$(BIN)/python -m bench.claims

bench-replicas: $(STAMP_DEV)
	$(BIN)/python -m bench.replicas

bench-failover: $(STAMP_DEV)
	$(BIN)/python -m bench.failover

# 10 minutes per engine (PostgreSQL, MariaDB): three replicas, one kill -9 every 20 s, then an audit of every fire.
chaos: $(STAMP_DEV)
	$(BIN)/python -m bench.chaos

clean:
	rm -rf $(VENV) var/*.db var/*.db-* bench/.venv-baseline
