# Developer and operator front door. From a fresh clone: `make demo`, then `make test`.
#
# Every target that runs Python first makes sure the virtual environment exists and holds the project.
# torch is installed on its own, pinned, BEFORE the project: pyproject only bounds it (>=2.4,<3) so that
# the Docker image can take a CUDA build, and pip keeps the already installed CPU build here.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.argd-installed

# Local services for the test suite (trust auth on loopback, as on the CI machines).
PG_HOST ?= 127.0.0.1
PG_PORT ?= 5432
PG_USER ?= postgres
REDIS_HOST ?= 127.0.0.1
REDIS_PORT ?= 6379
# Redis database the tests may use (and flush); keep it away from a developer's database 0.
TEST_REDIS_DB ?= 15
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
# The browser of the console tests: Debian's chromium, driven by Playwright (never `playwright install`).
CHROMIUM ?= /usr/bin/chromium
# The slowest tests are listed at the end of every run, so a suite that creeps towards its time budget shows why.
PYTEST_ARGS ?= --durations=15

.PHONY: help venv install demo test services fashion-mnist chromium wrk lint format serve docker-build clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-14s %s\n", $$1, $$2}'

venv install: $(STAMP) ## create .venv and install the project with its dev tools

$(STAMP): pyproject.toml
	@echo "==> virtual environment $(VENV) ($(PYTHON))"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	echo "==> $(TORCH) (before the project, so pip keeps this build)"
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	echo "==> the project and its dev tools"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# $(call debian_packages,WHAT,PACKAGES,PRESENT,IF_NOT): apt-get install PACKAGES (through sudo when not root)
# unless the shell test PRESENT already holds; IF_NOT runs where they cannot be installed (a message and
# exit 0 to go on without them, or an error and exit 1).
define debian_packages
	@if $(3); then echo "==> $(1) found"; exit 0; fi
	command -v apt-get >/dev/null || { echo "$(1) is missing and there is no apt-get to install $(2)" >&2; $(4); }
	if [ "$$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
	  echo "$(1) is missing and there is no root (or sudo) to install $(2)" >&2; $(4)
	fi
	echo "==> installing the Debian package(s) $(2)"
	export DEBIAN_FRONTEND=noninteractive
	$$SUDO apt-get install -y -q $(2) </dev/null \
	  || { $$SUDO apt-get update -q </dev/null && $$SUDO apt-get install -y -q $(2) </dev/null; } \
	  || { echo "could not install $(2)" >&2; $(4); }
	$(3) || { echo "$(1) is still missing after installing $(2)" >&2; $(4); }
endef

fashion-mnist: ## install the Fashion-MNIST Debian package when missing (the demo falls back to synthetic data)
	$(call debian_packages,Fashion-MNIST,dataset-fashion-mnist,[ -f "$(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz" ],echo "==> the demo will use synthetic images"; exit 0)

chromium: ## install the Debian packages chromium and chromium-driver when missing (the console tests need them)
	$(call debian_packages,Chromium ($(CHROMIUM)),chromium chromium-driver,[ -x "$(CHROMIUM)" ],echo "error: the console tests need it" >&2; exit 1)

wrk: ## install the load generator wrk (Debian package) for `argd bench api-latency` and its test; fails if it cannot
	$(call debian_packages,wrk,wrk,command -v wrk >/dev/null,echo "error: the latency benchmark and its test need it" >&2; exit 1)

demo: $(STAMP) fashion-mnist ## the whole service on this machine: backdoored model in, cleansed model out
	$(BIN)/argd demo

services: ## make sure Postgres and Redis answer on loopback, starting them when they do not
	@port_open() { $(PYTHON) -c "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()" "$$1" "$$2" 2>/dev/null; }
	wait_port() {
	  for _ in $$(seq 1 60); do port_open "$$1" "$$2" && return 0; sleep 0.5; done
	  echo "error: $$3 did not come up on $$1:$$2" >&2; return 1
	}
	if port_open $(PG_HOST) $(PG_PORT); then echo "==> Postgres is up on $(PG_HOST):$(PG_PORT)"; else
	  echo "==> starting Postgres"
	  command -v pg_ctlcluster >/dev/null || { echo "error: Postgres is down and pg_ctlcluster is missing" >&2; exit 1; }
	  for version in $$(ls /etc/postgresql); do pg_ctlcluster --skip-systemctl-redirect "$$version" main start || true; done
	  wait_port $(PG_HOST) $(PG_PORT) Postgres
	fi
	if port_open $(REDIS_HOST) $(REDIS_PORT); then echo "==> Redis is up on $(REDIS_HOST):$(REDIS_PORT)"; else
	  echo "==> starting Redis"
	  command -v redis-server >/dev/null || { echo "error: Redis is down and redis-server is missing" >&2; exit 1; }
	  mkdir -p /var/lib/redis /var/log/redis
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $(REDIS_PORT) --save "" --appendonly no \
	    --dir /var/lib/redis --logfile /var/log/redis/ci.log
	  wait_port $(REDIS_HOST) $(REDIS_PORT) Redis
	fi

# Postgres and Redis must answer before pytest starts: the service tests skip themselves when they cannot
# reach them, and a suite that skipped its service half must not pass here. Each test session makes its own
# throw-away database (dropped at the end) and a private Redis key prefix (tests/fixtures/database.py),
# so runs on a shared machine never see each other's rows. pytest's exit 5 ("no tests collected") fails
# the target too: a suite that silently ran nothing must not pass.
test: $(STAMP) services fashion-mnist chromium wrk ## lint, type check, then the whole test suite (Postgres and Redis are checked and started)
	@$(BIN)/python -c 'import sys, psycopg, redis; psycopg.connect(host=sys.argv[1], port=int(sys.argv[2]), user=sys.argv[3], dbname="postgres", connect_timeout=5).close(); redis.Redis(host=sys.argv[4], port=int(sys.argv[5]), socket_connect_timeout=5).ping()' \
	  "$(PG_HOST)" "$(PG_PORT)" "$(PG_USER)" "$(REDIS_HOST)" "$(REDIS_PORT)" \
	  || { echo "error: Postgres ($(PG_USER)@$(PG_HOST):$(PG_PORT)) or Redis ($(REDIS_HOST):$(REDIS_PORT)) refuses connections" >&2; exit 1; }
	export ARGD_TEST_PG_HOST="$(PG_HOST)" ARGD_TEST_PG_PORT="$(PG_PORT)"
	export ARGD_TEST_REDIS_URL="redis://$(REDIS_HOST):$(REDIS_PORT)/$(TEST_REDIS_DB)"
	export ARGD_TEST_CHROMIUM="$(CHROMIUM)"
	echo "==> ruff check (lint) and ruff format --check"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	echo "==> mypy (type check of argd/, configured in pyproject.toml)"
	$(BIN)/mypy
	echo "==> $(BIN)/python -m pytest -ra -q $(PYTEST_ARGS)"
	rc=0
	$(BIN)/python -m pytest -ra -q $(PYTEST_ARGS) || rc=$$?
	if [ "$$rc" -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
	exit "$$rc"

lint: $(STAMP) ## ruff: lint and formatting check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff: fix what can be fixed and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

serve: $(STAMP) ## the embedded service (SQLite + folder broker + one worker) on http://127.0.0.1:8000
	$(BIN)/argd serve

docker-build: ## build the service image (CUDA torch); needs Docker
	docker build -t argd:latest .

clean: ## remove the virtual environment, caches and demo data
	rm -rf $(VENV) .pytest_cache .ruff_cache argd-data build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
