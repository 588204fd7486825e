# The two commands: `make run` serves taskq, `make test` runs its test suite.
# Both set everything up first (virtualenv, dependencies, database).
# With DATABASE_URL unset they use an embedded PostgreSQL under var/.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000

export PORT

.PHONY: run stop cluster cluster-stop faults-cluster test-cluster test test-pgbouncer fuzz faults bench bench-smoke setup migrate static lint format db-stop clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

migrate: setup
	TASKQ_DB_STATEMENT_TIMEOUT_MS=0 $(PY) manage.py migrate --noinput

# The Procfile's processes under scripts/supervisor.py. `exec`: the supervisor
# is make's own child, with no shell in between, so the SIGTERM make forwards
# reaches it, and it watches make for the signals make does not forward
# (SIGHUP). Any of them, Ctrl-C, `make stop` or the exit of any one process
# stops the whole stack within 10 s; a requested stop exits 0.
static: setup
	$(PY) manage.py collectstatic --noinput --verbosity 0

run: migrate static
	@echo ""
	@echo "taskq is starting on http://127.0.0.1:$(PORT)/ (web, Celery worker and beat)"
	@echo "  Admin:        http://127.0.0.1:$(PORT)/admin/  (create a login: $(PY) manage.py createsuperuser)"
	@echo "  API token:    $(PY) manage.py create_api_token my-worker"
	@echo "  Try it:       curl -H \"Authorization: Bearer <token>\" http://127.0.0.1:$(PORT)/v1/namespace"
	@echo "  Health:       curl http://127.0.0.1:$(PORT)/healthz"
	@echo "  Stop:         Ctrl-C (or \`make stop\` from another terminal) stops web, worker and beat together"
	@echo ""
	exec $(PY) scripts/supervisor.py run --watch-parent

# Stops a stack that `make run` left running from this checkout (var/run/).
# The standard library only: stopping never waits for (or needs) the virtualenv.
stop:
	$(PYTHON) scripts/supervisor.py stop

# The multi-server layout on this machine (scripts/cluster.py): PgBouncer in
# front of PostgreSQL, three app servers behind HAProxy on $(PORT), the
# Celery worker and beat on Redis. Ctrl-C or `make cluster-stop` stops it all.
cluster: migrate static
	exec $(PY) scripts/cluster.py run --watch-parent

cluster-stop:
	$(PYTHON) scripts/cluster.py stop

# Spread over the machine's cores by pytest-xdist (a worker per core and one
# more), each worker on a test database of its own. The slow tests start first, and the tests that share a
# costly fixture run on one worker (tests/conftest.py); the others go out
# one at a time, so none of them is left to the end.
test: setup
	$(PY) -m pytest -n auto --ignore=tests/cluster

# tests/cluster: one `make cluster` of their own (free ports, a temporary
# directory) on the test database, tried through HAProxy, PgBouncer and Redis;
# CI runs it.
test-cluster: setup
	$(PY) -m pytest tests/cluster

# The API tests again, through a real PgBouncer in transaction mode
# (Debian's pgbouncer package); CI runs it.
test-pgbouncer: setup
	$(PY) scripts/pgbouncer_tests.py -q

# schemathesis against a live server, held to the OpenAPI schema (fixed seed).
fuzz: setup
	$(PY) scripts/fuzz.py

# The capture/release throughput over HTTP against the raw-SQL limit (a few
# minutes; see docs/benchmarks.md for this and the other benchmarks).
bench: setup
	$(PY) -m bench.throughput

# Every benchmark at a tiny size (CI runs it, so none rots).
bench-smoke: setup
	$(PY) scripts/bench_smoke.py

# The fault-injection run (docs/reliability.md); CI runs a 30 s form with
# FAULTS_SECONDS=30 FAULTS_WORKERS=6.
faults: setup
	$(PY) scripts/faults.py --seconds $(or $(FAULTS_SECONDS),180) --workers $(or $(FAULTS_WORKERS),16)

# The fault-injection run against `make cluster`'s layout (docs/reliability.md):
# app servers, PgBouncer and Celery killed, PostgreSQL stopped and paused.
faults-cluster: setup
	$(PY) scripts/faults.py --cluster --seconds $(or $(FAULTS_SECONDS),120) --workers $(or $(FAULTS_WORKERS),16)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/mypy --strict clients/python/taskq_client
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

db-stop: setup
	$(PY) -m taskq_project.embedded_postgres stop

clean: db-stop
	rm -rf $(VENV) var
