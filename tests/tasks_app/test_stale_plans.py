"""Prepared statements that a migration made stale: recovered, never a 500.

A column type change makes PostgreSQL refuse a prepared statement that
returns the column ("cached plan must not change result type") for as long as
the connection lives; each connection must drop its prepared statements and
carry on.
"""

import psycopg
import pytest
from django.db import connection, transaction

from taskq_project.api import exception_handler
from taskq_project.database_url import database_url
from tasks_app.services import capture_tasks, release_tasks
from tests.factories import make_namespace, make_tasks

pytestmark = pytest.mark.django_db(transaction=True)


def alter_timeout_type(to: str) -> None:
    """Change the column's type from another connection, as a migration would."""
    with psycopg.connect(database_url(connection.settings_dict), autocommit=True) as other:
        other.execute(f"ALTER TABLE tasks_app_task ALTER COLUMN timeout TYPE {to}")


@pytest.fixture
def prepared_capture():
    """A connection that has prepared the capture statement (threshold: 5 runs)."""
    make_namespace("ns")
    make_tasks("ns", 40)
    for _ in range(8):
        rows = capture_tasks(namespace_id="ns", limit=1)
        release_tasks(status="idle", task_ids=[rows[0].id])
    assert connection.connection.prepare_threshold is not None
    yield
    alter_timeout_type("integer")


def test_a_type_change_under_a_prepared_capture_is_recovered_at_once(prepared_capture):
    alter_timeout_type("bigint")
    (row,) = capture_tasks(namespace_id="ns", limit=1)
    assert row.timeout == 300
    # And it stays recovered.
    assert len(capture_tasks(namespace_id="ns", limit=2)) == 2


def test_inside_a_transaction_it_answers_503_once_then_recovers(prepared_capture):
    alter_timeout_type("bigint")
    with pytest.raises(Exception) as raised, transaction.atomic():
        capture_tasks(namespace_id="ns", limit=1)
    response = exception_handler(raised.value, {})
    assert response is not None
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    (row,) = capture_tasks(namespace_id="ns", limit=1)
    assert row.status == "in_progress"
