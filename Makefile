SHELL := /bin/bash
# The system interpreter first: PostgreSQL runs `wal-push` from this venv as its own OS user,
# which cannot reach an interpreter under root's home (pyenv).
PYTHON ?= $(shell command -v /usr/bin/python3.11 || command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install system-tools test-tools services dev test test-fast lint lock bench

## install: Python packages into .venv (pinned by requirements.lock) and the system tools
install: system-tools $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

system-tools:
	bash scripts/install-system-tools.sh

## test-tools: what only the tests need (Chromium, chromedriver, docker-compose)
test-tools:
	bash scripts/install-system-tools.sh test

## services: PostgreSQL, Redis and RabbitMQ (with management) up on localhost
services:
	bash scripts/ensure-services.sh

## dev: the Dagster UI and daemon on http://127.0.0.1:3000 with the local defaults; it says
## what it would back up, its schedules and request sensor start stopped (BACKUP_START_STOPPED),
## and the first Ctrl-C stops it
dev: install $(DAGSTER_HOME)/dagster.yaml
	@export BACKUP_START_STOPPED=$${BACKUP_START_STOPPED:-true}; \
	$(BIN)/python scripts/dev_banner.py && \
	exec bash scripts/dev.sh $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Dagster reads its instance config from $$DAGSTER_HOME/dagster.yaml.
$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p "$(DAGSTER_HOME)"
	cp dagster.yaml "$@"

# The suite on every core (pytest-xdist), a module at a time (a module's fixtures, as the
# end-to-end stack, start once), longest modules first (conftest.py orders them; xdist would
# order them by their number of tests); each worker has its own broker vhost,
# directories, databases and ports. One worker more than cores: the tests spend about a third
# of their time waiting on the services and Dagster's daemon.
PYTEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

## test: install, make sure the services are up, lint, run the whole suite (end to end and
## browser included; screenshots land in test-results/)
test: install test-tools services lint $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/pytest $(PARALLEL)

## test-fast: what a developer runs while working, in under two minutes: the whole suite but
## the end-to-end, browser and slow tests (`make test` runs those too)
test-fast: install services $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/pytest $(PARALLEL) -m "not slow and not e2e"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## lock: re-pin every Python dependency after a change to pyproject.toml
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q -e '.[test]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^backup.pipelines' > requirements.lock
	rm -rf .lock-venv

bench: install services
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/postgres.py
	$(BIN)/python bench/redis_rdb.py
	$(BIN)/python bench/documents.py
	$(BIN)/python bench/store_listing.py
	$(BIN)/python bench/metrics.py
	$(BIN)/python bench/pitr.py
	$(BIN)/python bench/copy_stores.py
	$(BIN)/python bench/recover.py
	$(BIN)/python bench/sites_scale.py
