"""The session timeouts hold, with or without a transaction-mode pooler in front.

`make test` runs this file straight against PostgreSQL (the timeouts come as
startup options); `make test-pgbouncer` runs it again, with the API tests,
through a real PgBouncer in transaction mode (they come from the role's
defaults, which `set_database_timeouts` wrote).
"""

import logging

import dj_database_url
import pytest
from django.core.management import call_command
from django.db import connection
from django.db.utils import ConnectionHandler

from taskq_project import db_settings
from tests.pgcluster import Cluster

WANTED = {"statement_timeout": 30_000, "idle_in_transaction_session_timeout": 60_000}


pytestmark = pytest.mark.django_db(transaction=True)


def test_every_session_runs_with_the_configured_timeouts(settings):
    assert db_settings.wanted() == WANTED
    connection.close()  # a new session, as each pooled transaction may be
    assert db_settings.current(connection) == WANTED


@pytest.fixture(scope="module")
def cluster():
    server = Cluster()
    server.start()
    yield server
    server.destroy()


def connect(cluster: Cluster, *, pooled: bool):
    parsed = dj_database_url.parse(cluster.url())
    if not pooled:
        parsed["OPTIONS"] = {"options": "-c statement_timeout=30000"}
    handler = ConnectionHandler({"default": parsed})
    return handler["default"]


def test_set_database_timeouts_makes_them_the_roles_defaults(cluster, monkeypatch, capsys):
    fresh = connect(cluster, pooled=True)
    assert db_settings.current(fresh) != WANTED  # PostgreSQL's own: no timeouts
    fresh.close()
    monkeypatch.setattr("taskq_project.management.commands.set_database_timeouts.connection", fresh)
    call_command("set_database_timeouts")
    assert "statement_timeout = 30000 ms" in capsys.readouterr().out
    fresh.close()
    later = connect(cluster, pooled=True)
    assert db_settings.current(later) == WANTED
    later.close()


def test_behind_a_pooler_a_session_without_them_is_reported(cluster, settings, caplog):
    settings.TASKQ_DB_POOLER = "transaction"
    bare = connect(cluster, pooled=True)
    with bare.cursor() as cursor:
        cursor.execute("ALTER ROLE CURRENT_USER RESET ALL")
    bare.close()
    with caplog.at_level(logging.ERROR, logger="taskq_project.db_settings"):
        db_settings.check_on_connect(sender=None, connection=bare)
    assert "set_database_timeouts" in caplog.text
    caplog.clear()
    db_settings.set_role_defaults(bare)
    bare.close()
    with caplog.at_level(logging.ERROR, logger="taskq_project.db_settings"):
        db_settings.check_on_connect(sender=None, connection=bare)
    assert caplog.text == ""
    bare.close()
