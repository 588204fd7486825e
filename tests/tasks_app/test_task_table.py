"""The task table's design for the hot path, and its integrity constraints."""

import pytest
from django.db import IntegrityError, connection, transaction

from tasks_app import sql
from tasks_app.models import Task
from tests.factories import make_namespace, make_tasks


def explain(query: str, params: dict) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + query, params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.django_db
def test_capture_is_one_range_scan_of_the_partial_index_however_many_tasks_are_done():
    make_namespace("ns")
    make_namespace("other")
    make_tasks("ns", 20_000, prefix="d", status="done")
    make_tasks("other", 20_000, prefix="o")
    make_tasks("ns", 50, prefix="i")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_task")
    plan = explain(sql.CAPTURE, {"namespace_id": "ns", "limit": 10})
    assert "task_capture_idx" in plan
    assert "Seq Scan" not in plan
    assert "Sort" not in plan  # the index already yields the FIFO order


@pytest.mark.django_db
def test_release_looks_tasks_up_by_id_index():
    make_namespace("ns")
    make_tasks("ns", 20_000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_task")
    plan = explain(sql.RELEASE, {"ids": ["t000001", "t000002"], "status": "done", "scope": None})
    assert "Index Scan" in plan
    assert "Seq Scan" not in plan


@pytest.mark.django_db
@pytest.mark.parametrize(
    "changes",
    [
        {"status": "done"},  # a done task left in the capture index
        {"status": "in_progress"},  # a lease without an expiry
        {"available_at": None},  # an idle task nobody could capture
        {"retries_left": -1},
        {"timeout": 0},
        {"status": "paused"},
    ],
)
def test_the_database_refuses_a_task_state_the_lease_rules_do_not_allow(changes):
    make_namespace("ns")
    make_tasks("ns", 1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.filter(pk="t000000").update(**changes)


@pytest.mark.django_db
def test_the_primary_key_serves_the_admins_id_prefix_search():
    make_namespace("ns")
    make_tasks("ns", 20_000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_task")
    query = Task.objects.filter(id__startswith="t0001").values("id")
    sql_text, params = query.query.sql_with_params()
    plan = explain(sql_text.replace("%s", "%(p0)s"), {"p0": params[0]})
    assert "tasks_app_task_pkey" in plan
    assert "Seq Scan" not in plan
