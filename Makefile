# Two commands matter: `make run` and `make test`. Each sets up everything it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv system-deps run demo test test-unit test-integration lint fmt compose-check dev-up dev-down dev-reset bench faults clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## virtualenv with the project and its dev dependencies

run: venv ## Kafka + PostgreSQL (local ones started if not given, stopped after it unless KEEP_SERVICES=1), migrations, the engine in the foreground
	deploy/local/with-services.sh $(BIN)/incidents serve

demo: venv ## like `run`, plus a generator of realistic incidents and a live terminal view
	deploy/local/with-services.sh $(BIN)/incidents demo

lint: venv ## ruff (lint + format check) and mypy
	$(BIN)/ruff check services tests benchmarks
	$(BIN)/ruff format --check services tests benchmarks
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff check --fix services tests benchmarks
	$(BIN)/ruff format services tests benchmarks

compose-check: ## validate docker-compose.yml offline (no Docker engine needed)
	@bash deploy/local/compose-check.sh

system-deps: ## Debian packages the tests need (Chromium, docker-compose), installed when missing
	@bash deploy/local/system-deps.sh

test: system-deps lint compose-check ## lint, then every test tier against real Kafka and PostgreSQL
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-integration: venv
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

dev-up: venv
	$(BIN)/incidents dev up

dev-down: venv
	$(BIN)/incidents dev down

dev-reset: venv ## stop the local services and delete this checkout's dev data (asks first)
	$(BIN)/incidents dev reset

bench: venv ## every benchmark against real Kafka and PostgreSQL: benchmarks/results.json and results.md
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

faults: venv ## fault injection at full scale (a small version of each case runs in `make test`)
	FAULTS_SCALE=full $(BIN)/python -m pytest tests/faults tests/integration/test_engine_faults.py -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
