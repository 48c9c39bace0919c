# The two commands a newcomer needs are `make run` and `make test`; every
# target creates or reuses the virtual environment itself.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt docs venv clean bench-gateway bench-ledger bench-activity bench-propagation bench-token-flood bench-restart bench-e2e bench-scale bench-soak up down test-tools

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)  ## the whole platform on the embedded default; its state is kept in var/ (ARGS=--reset starts fresh)
	$(BIN)/points dev $(ARGS)

test: $(STAMP) test-tools  ## unit, integration, end-to-end and browser tests on real PostgreSQL and Kafka protocol
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-tools:  ## from Debian when missing: Chromium for the console's browser tests (Playwright never downloads one), curl for the guide's examples
	@command -v chromium >/dev/null && command -v curl >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium curl)

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

bench-activity: $(STAMP)  ## a rule's activity read (p50/p95/max) over 1,000,000 ledger transactions of that rule
	$(BIN)/python bench/activity.py $(BENCH_ARGS)

bench-propagation: $(STAMP)  ## how long a rule change takes to reach the gateway (p50/p95/max)
	$(BIN)/python bench/propagation.py $(BENCH_ARGS)

bench-e2e: $(STAMP)  ## trigger -> 202, points applied, callback and status, per hop, at 10, 100 and 500 req/s; the share e-mail
	$(BIN)/python bench/e2e.py $(BENCH_ARGS)

bench-scale: $(STAMP)  ## throughput and latency with one and two replicas of every service, and the pause a replica leaving or joining causes
	$(BIN)/python bench/scale.py $(BENCH_ARGS)

bench-token-flood: $(STAMP)  ## the JWKS's latency while 40 callers send wrong client secrets
	$(BIN)/python bench/token_flood.py $(BENCH_ARGS)

bench-soak: $(STAMP)  ## 10 minutes of steady load with retentions shortened: every table's rows and size, flat after the first retention
	$(BIN)/python bench/soak.py $(BENCH_ARGS)

bench-restart: $(STAMP)  ## how long make run takes to start on a kept state of 10,000 members, against a fresh start
	$(BIN)/python bench/restart.py $(BENCH_ARGS)

COMPOSE := docker compose -f deploy/compose.yaml

# Random secrets for the compose stack, written once and never committed.
deploy/.env:
	@umask 077 && $(PYTHON) -c "import secrets; names = ('POSTGRES_PASSWORD', 'CALLBACK_SIGNING_KEY', 'INVITATION_SEALING_KEY', 'RULES_SIGNING_KEY_ENCRYPTION_KEY', 'NOTIFIER_OPERATOR_TOKEN'); print('\n'.join(f'{n}={secrets.token_urlsafe(32)}' for n in names))" > $@
	@echo "wrote $@ (random secrets for the compose stack)"

up: deploy/.env  ## the platform on Apache Kafka, PostgreSQL and Mailpit in containers (needs Docker)
	$(COMPOSE) up --build --detach
	@echo "console http://localhost:8001/console  gateway http://localhost:8002  mail http://localhost:8025"

down:  ## stop the compose stack (its volumes stay; add -v to drop them)
	$(COMPOSE) down

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
