# The two commands a newcomer needs are `make run` and `make test`; every
# target creates or reuses the virtual environment itself.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt docs venv clean bench-gateway bench-ledger

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)  ## the whole platform on the embedded default
	$(BIN)/points dev

test: $(STAMP)  ## unit, integration and end-to-end tests on real PostgreSQL and Kafka protocol
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff, mypy, the import boundaries and the contracts' schema export
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy contracts infra services points_cli
	$(BIN)/lint-imports
	$(BIN)/python -m contracts.export --check

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: $(STAMP)  ## AsyncAPI and OpenAPI documents into docs/api/
	$(BIN)/python -m points_cli.docs docs/api

bench-gateway: $(STAMP)  ## gateway throughput and latency against a bare FastAPI endpoint
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/gateway.py $(BENCH_ARGS)

bench-ledger: $(STAMP)  ## ledger apply rate end to end against pgbench -N on the same PostgreSQL
	@command -v pgbench >/dev/null || (apt-get update -qq && apt-get install -y -qq postgresql-client)
	$(BIN)/python bench/ledger.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
