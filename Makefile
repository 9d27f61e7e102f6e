# Two commands on a fresh machine: `make demo` (live demo) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install deps demo test test-unit lint bench backtest dashboards clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e . --group dev
	touch $(STAMP)

install: $(STAMP) ## create .venv with the project and its dev tools (quick when nothing changed)

deps: ## the programs the tests run for real (Prometheus, promtool, amtool, Chromium, Redis): installed with apt when possible
	tools/deps.sh

demo: install ## live demo on the embedded default (broker, worker, simulator, wall page)
	$(BIN)/kpi demo

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install deps lint ## lint, then every test (unit, integration against real services, e2e); none may be skipped
	KPI_NO_SKIPS=1 $(BIN)/pytest -q

test-unit: install ## fast unit tests only (no servers)
	$(BIN)/pytest -q tests/unit

bench: install ## throughput, memory, scrape time and freshness figures
	$(BIN)/python -m bench

backtest: install ## alert quality: detection delay and false alarms of the sales drop alerts (bench/backtest_quality.py; ~20 min on 2 cores)
	$(BIN)/python -m bench.backtest_quality

dashboards: install ## regenerate grafana/dashboards/*.json from dashboards/ (commit the result)
	$(BIN)/python -m dashboards

clean: ## remove the venv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
