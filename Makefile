# `make run` and `make test` are all a newcomer needs; both do the set-up that is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help setup run test test-unit test-integration test-e2e lint tour migrate bench

help:
	@echo "make run    - set up what is missing, then start the whole stack on :8080 (Ctrl-C stops it)"
	@echo "make test   - set up what is missing, then ruff and every test: unit, integration, end to end"
	@echo "make tour   - the curl tour of the API against a running stack (bin/test.sh)"
	@echo "make bench  - load a running stack and print its throughput and latency (bin/benchmark.py)"
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

migrate: setup

tour:
	bin/test.sh

bench:
	$(PY) bin/benchmark.py

lint: setup
	$(PY) -m ruff check .
