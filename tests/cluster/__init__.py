"""Tests against `make cluster` (scripts/cluster.py): HAProxy, three app servers,
PgBouncer, Redis, as the README's production layout runs them on one machine.

They start a dozen processes, so `make test` leaves them out; `make
test-cluster` runs them. One cluster serves the whole session (conftest.py).
"""
