# hookstream — developer entry points. `make run` and `make test` work from a clean clone on a
# fresh machine: each installs what it needs (venv, system packages, Kafka jars) and starts
# the real Kafka broker and PostgreSQL under .local/.

SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The uv that keeps uv.lock, installed first (hashes checked) from this export of the lock's
# `bootstrap` group; `make lock` regenerates it.
UV_BOOTSTRAP := deploy/uv-bootstrap.txt
UV_VERSION := $(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' $(UV_BOOTSTRAP))
ENV_FILE := .local/env
# `set -a` exports every KEY=value in .local/env to the command that follows.
WITH_ENV := set -a && source $(ENV_FILE) && set +a &&
PYTEST_ARGS ?=
# A .venv (from $(PYTHON)) holding uv $(UV_VERSION); `uv sync` then installs the rest from uv.lock.
# A venv that failed half-way (no python3-venv, no pip in it) is removed or repaired, not reused.
BOOTSTRAP_UV := set -e; \
	if ! $(BIN)/python -c '' 2>/dev/null; then rm -rf $(VENV); \
		$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "$(PYTHON) -m venv failed: install python3-venv" >&2; exit 1; }; fi; \
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null; \
	test "$$($(BIN)/uv --version 2>/dev/null | cut -d' ' -f2)" = "$(UV_VERSION)" \
	|| $(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(UV_BOOTSTRAP)

.PHONY: help install system-deps up down migrate run test test-unit lint lock dist bench clean

help:
	@echo "make run      install, start Kafka + PostgreSQL, migrate, create a demo org, run hookstream"
	@echo "make test     the whole test suite against real Kafka and PostgreSQL"
	@echo "make up/down  start/stop local Kafka + PostgreSQL (.local/), writes .local/env"
	@echo "             (ports: HOOKSTREAM_LOCAL_{KAFKA,KAFKA_CONTROLLER,PG}_PORT, remembered in .local/env)"
	@echo "make install  create .venv with hookstream and its dev tools"
	@echo "make migrate  apply database migrations"
	@echo "make lint     ruff, mypy (strict on hookstream/core), hadolint (part of make test)"
	@echo "make lock     re-resolve uv.lock after editing pyproject.toml (make lock UPGRADE=1: newest versions)"
	@echo "make dist     the sdist, the wheel and the hashed runtime requirements in dist/"
	@echo "make bench    the benchmark harness (not part of make test)"

# Installs exactly what uv.lock says (hashes checked) into .venv: runtime, the dev group and the build
# tools. --locked refuses a uv.lock that pyproject.toml has moved past (run `make lock`).
$(STAMP): pyproject.toml uv.lock $(UV_BOOTSTRAP) | system-deps
	@$(BOOTSTRAP_UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv sync --quiet --locked --group build
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

test: install lint up
	@$(WITH_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check hookstream tests
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

lock:
	@$(BOOTSTRAP_UV)
	$(BIN)/uv lock $(if $(UPGRADE),--upgrade)
	$(BIN)/uv export --quiet --locked --only-group bootstrap --no-emit-project --no-header \
		--format requirements-txt --output-file $(UV_BOOTSTRAP)

dist: $(STAMP)
	@rm -rf dist
	bash deploy/build-dist.sh dist

bench: install up
	@$(WITH_ENV) $(BIN)/python -m tests.bench.run $(BENCH_ARGS)

clean: down
	rm -rf .local $(VENV)
