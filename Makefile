# `make run` and `make test` are all a newcomer needs; both do the set-up that is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help setup run test test-unit test-integration test-e2e lint tour migrate seed bench
.PHONY: dead-letters replay-dead-letters quarantine replay-quarantine
.PHONY: dead-letters replay-dead-letters migrate-queues
.PHONY: test-faults

help:
	@echo "make run    - set up what is missing, then start the whole stack on :8080 (Ctrl-C stops it)"
	@echo "make test   - set up what is missing, then ruff and every test: unit, integration, end to end"
	@echo "make test-faults - kill, stop and cut the real processes, broker and database; count what survives"
	@echo "make tour   - the curl tour of the API against a running stack (bin/test.sh)"
	@echo "make seed   - add MESSAGES (default 1000000) messages to the development account, one conversation of 100,000"
	@echo "make bench  - load a running stack and print its throughput and latency (bin/benchmark.py)"
	@echo "make dead-letters        - list every dead-letter queue's messages and why they died (ARGS='--queue Q --limit N')"
	@echo "make replay-dead-letters - move dead letters back to their queues (ARGS='--queue Q --limit N --message-id ID')"
	@echo "make quarantine          - list the webhooks refused for their signature: why, when, URL, body (ARGS='--limit N')"
	@echo "make replay-quarantine   - verify them again with the current secrets; publish those that pass (ARGS='--limit N')"
	@echo "make migrate-queues      - give queues of an earlier version this one's arguments, keeping their messages (services stopped)"
	@echo "make lint   - ruff"

setup:
	bin/setup.sh

run:
	bin/start.sh

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest tests/unit

test-integration: setup
	$(PY) -m pytest tests/integration

test-e2e: setup
	$(PY) -m pytest tests/e2e

test-faults: setup
	$(PY) -m pytest tests/faults

migrate: setup

tour:
	bin/test.sh

# Adds a new set on every run; the database is DATABASE_URL's (environment or .env).
MESSAGES ?= 1000000
seed:
	$(PY) bin/seed.py --messages $(MESSAGES)

bench:
	$(PY) bin/benchmark.py $(ARGS)

dead-letters:
	$(PY) -m common.dead_letters list $(ARGS)

replay-dead-letters:
	$(PY) -m common.dead_letters replay $(ARGS)

quarantine:
	$(PY) -m gateway.quarantine list $(ARGS)

replay-quarantine:
	$(PY) -m gateway.quarantine replay $(ARGS)
migrate-queues:
	$(PY) -m common.queue_migration

lint: setup
	$(PY) -m ruff check .
