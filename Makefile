# Two commands do all set-up on a fresh machine:
#   make demo   the example project on SQLite against the local Nomos sandbox
#   make test   the test suite (SQLite + local memory; PostgreSQL + Redis when DATABASE_URL /
#               CACHE_URL are set)
# Each creates its own virtualenv in .venv on first use.

# Django 6.x needs Python 3.12+; prefer a pyenv 3.12 when the default python3 is older.
PYTHON ?= $(firstword $(wildcard /root/.pyenv/versions/3.12*/bin/python3) $(shell command -v python3))
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
SANDBOX_PORT ?= 8765
# make demo TASKS=db: webhooks processed by the database task backend's worker.
TASKS ?=

.PHONY: demo test docs mutate bench bench-goals bench-sync bench-admin bench-load bench-outage bench-slow-clients lint typecheck build matrix clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,browser,dev]' -r example_project/requirements.txt
	touch $(STAMP)

test: $(STAMP)
	PYTHONDEVMODE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# Mutation score per core module (mutmut; settings in setup.cfg [mutmut]). MUTATE_ARGS=--sample
# runs a fixed fifth; CI runs a tenth (.ci/run).
mutate: $(STAMP)
	$(BIN)/python mutation/run.py $(MUTATE_ARGS)

demo: $(STAMP)
	$(BIN)/python example_project/demo.py --host $(HOST) --port $(PORT) --sandbox-port $(SANDBOX_PORT) --tasks "$(TASKS)"

# Load benchmarks on gunicorn + PostgreSQL + Redis + the sandbox; prints tables. The database
# named by BENCH_DATABASE_URL is flushed: give it one of its own.
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/nomos_bench
BENCH_CACHE_URL ?= redis://127.0.0.1:6379/14
BENCH_RQ_URL ?= redis://127.0.0.1:6379/15
bench: bench-goals bench-sync bench-admin bench-load bench-outage bench-slow-clients

# The performance goals (issue 11), each next to a baseline measured in the same run, as ratios;
# on the same database and cache as the load benchmark. GOALS_ARGS=--quick for a shorter run.
bench-goals: $(STAMP)
	-createdb -h 127.0.0.1 -U postgres $(lastword $(subst /, ,$(BENCH_DATABASE_URL))) 2>/dev/null
	DATABASE_URL=$(BENCH_DATABASE_URL) CACHE_URL=$(BENCH_CACHE_URL) \
		$(BIN)/python bench/bench_goals.py $(GOALS_ARGS)

# nomos_sync at 10,000 and 100,000 subscriptions (issue 22): peak memory and CPU against the
# HTTP+JSON floor, each in a fresh process. SYNC_ARGS=--quick for 1,000 and 10,000.
bench-sync: $(STAMP)
	-createdb -h 127.0.0.1 -U postgres $(lastword $(subst /, ,$(BENCH_DATABASE_URL))) 2>/dev/null
	DATABASE_URL=$(BENCH_DATABASE_URL) CACHE_URL=$(BENCH_CACHE_URL) \
		$(BIN)/python bench/bench_sync.py $(SYNC_ARGS)

# Every admin page and the health page at 1,000,000 events / 200,000 customers vs 1,000 / 200
# (issue 22), PostgreSQL only. ADMIN_ARGS=--quick for 100,000 / 20,000.
bench-admin: $(STAMP)
	-createdb -h 127.0.0.1 -U postgres $(lastword $(subst /, ,$(BENCH_DATABASE_URL))) 2>/dev/null
	DATABASE_URL=$(BENCH_DATABASE_URL) CACHE_URL=$(BENCH_CACHE_URL) \
		$(BIN)/python bench/bench_admin.py $(ADMIN_ARGS)

# gunicorn + PostgreSQL + Redis + the sandbox at 50 ms: clicks, webhooks (inline, db, rq), the
# catch-up, the health page, and a backlog of 10,000 events drained under API_RATE_LIMIT 10
# beside portal clicks (issue 22). BENCH_ARGS=--quick for a short run (CI), BENCH_ARGS="--only
# backlog" for one part.
bench-load: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	-createdb -h 127.0.0.1 -U postgres $(lastword $(subst /, ,$(BENCH_DATABASE_URL))) 2>/dev/null
	DATABASE_URL=$(BENCH_DATABASE_URL) CACHE_URL=$(BENCH_CACHE_URL) BENCH_RQ_URL=$(BENCH_RQ_URL) \
		$(BIN)/python bench/bench_load.py $(BENCH_ARGS)

# Nomos hanging for 20 s under 3 gunicorn workers: the 503s of clicks and webhooks without and
# with the outage breaker (issue 9). OUTAGE_ARGS="--clickers 8" for a heavier load.
bench-outage: $(STAMP)
	-createdb -h 127.0.0.1 -U postgres $(lastword $(subst /, ,$(BENCH_DATABASE_URL))) 2>/dev/null
	DATABASE_URL=$(BENCH_DATABASE_URL) CACHE_URL=$(BENCH_CACHE_URL) \
		$(BIN)/python bench/bench_outage.py $(OUTAGE_ARGS)

# A click while 10 connections send a body 1 byte every 2 s: gunicorn's 3 sync workers alone and
# behind nginx (deploy/; issue 19). Needs Debian's nginx (apt-get install nginx-light).
bench-slow-clients: $(STAMP)
	-createdb -h 127.0.0.1 -U postgres $(lastword $(subst /, ,$(BENCH_DATABASE_URL))) 2>/dev/null
	DATABASE_URL=$(BENCH_DATABASE_URL) CACHE_URL=$(BENCH_CACHE_URL) \
		$(BIN)/python bench/bench_slow_clients.py $(SLOW_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check nomos_billing

typecheck: $(STAMP)
	$(BIN)/mypy nomos_billing

# The documentation site in docs/_build/html, warnings as errors (as .ci/run builds it).
docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html

build: $(STAMP)
	rm -rf dist && $(BIN)/python -m build --outdir dist .

matrix: $(STAMP)
	$(BIN)/nox

clean:
	rm -rf $(VENV) build dist docs/_build docs/reference/_generated *.egg-info .pytest_cache .ruff_cache .mypy_cache .nox mutants
