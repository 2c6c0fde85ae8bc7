# hookstream — developer entry points. `make run` and `make test` work from a clean clone on a
# fresh machine: each installs what it needs (venv, system packages, Kafka jars) and starts
# the real Kafka broker and PostgreSQL under .local/.

SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ENV_FILE := .local/env
# `set -a` exports every KEY=value in .local/env to the command that follows.
WITH_ENV := set -a && source $(ENV_FILE) && set +a &&
PYTEST_ARGS ?=

.PHONY: help install system-deps up down migrate run test test-unit lint bench clean

help:
	@echo "make run      install, start Kafka + PostgreSQL, migrate, create a demo org, run hookstream"
	@echo "make test     the whole test suite against real Kafka and PostgreSQL"
	@echo "make up/down  start/stop local Kafka + PostgreSQL (.local/), writes .local/env"
	@echo "make install  create .venv with hookstream and its dev tools"
	@echo "make migrate  apply database migrations"
	@echo "make lint     ruff"
	@echo "make bench    the benchmark harness (not part of make test)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) system-deps

system-deps:
	@bash deploy/local/system-deps.sh

up: system-deps
	@bash deploy/local/up.sh

down:
	@bash deploy/local/down.sh

migrate: install up
	@$(WITH_ENV) $(BIN)/hookstream migrate

run: install up migrate
	@$(WITH_ENV) bash deploy/local/run.sh

test: install up
	@$(WITH_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check hookstream tests

bench: install up
	@$(WITH_ENV) $(BIN)/python -m tests.bench.run $(BENCH_ARGS)

clean: down
	rm -rf .local $(VENV)
