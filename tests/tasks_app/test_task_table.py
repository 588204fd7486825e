"""The task table's design for the hot path, and its integrity constraints."""

import re

import pytest
from django.db import IntegrityError, connection, transaction

from tasks_app import lease
from tasks_app.models import Task
from tasks_app.services import capture_tasks, release_tasks
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
    plan = explain(lease.CAPTURE, lease.capture_params("ns", 10))
    assert "task_capture_priority_idx" in plan
    assert "Seq Scan on tasks_app_task" not in plan
    # One range scan per priority level, each bounded by the clock, taken in
    # order under the LIMIT (a LATERAL join over the levels).
    assert "Function Scan on generate_series p" in plan
    assert "AND (priority = p.priority) AND (available_at <= " in plan
    # The picked rows are a CTE of their own, evaluated once, so LIMIT holds.
    assert "CTE picked" in plan
    # The index already yields the FIFO order: the only sort is of the (at
    # most `limit`) leased rows, back into queue order for the answer.
    sort_keys = [line.strip() for line in plan.splitlines() if "Sort Key" in line]
    assert sort_keys == ['Sort Key: leased.priority, leased.queued_at, leased.id COLLATE "C"'], plan


@pytest.mark.django_db
def test_release_looks_tasks_up_by_id_index():
    make_namespace("ns")
    make_tasks("ns", 20_000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_task")
    plan = explain(
        lease.RELEASE,
        lease.release_params(["t000001", "t000002"], None, "done"),
    )
    assert "Index Scan" in plan
    assert "Seq Scan on tasks_app_task" not in plan


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


QUEUE_TABLE_SETTINGS = {
    "autovacuum_vacuum_scale_factor=0.01",
    "autovacuum_vacuum_threshold=1000",
    "autovacuum_analyze_scale_factor=0.02",
    "vacuum_index_cleanup=on",
}


@pytest.mark.django_db
def test_the_task_table_is_vacuumed_as_a_queue_table():
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'tasks_app_task'")
        (options,) = cursor.fetchone()
    assert QUEUE_TABLE_SETTINGS <= set(options)


def capture_scan_buffers(namespace_id: str) -> int:
    """Index pages the capture's range scan reads to find its first 10 tasks."""
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT id FROM tasks_app_task "
            "WHERE namespace_id = %s AND priority = 0 AND available_at <= statement_timestamp() "
            "ORDER BY available_at LIMIT 10",
            [namespace_id],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "task_capture_priority_idx" in plan
    match = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)
    assert match, plan
    return int(match.group(1)) + int(match.group(2) or 0)


@pytest.fixture
def no_autovacuum_of_the_task_table():
    """Vacuums of the task table come only from the test (ALTER TABLE outlives it)."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE tasks_app_task SET (autovacuum_enabled = off)")
    yield
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE tasks_app_task RESET (autovacuum_enabled)")


# VACUUM cannot run inside the test's transaction.
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_autovacuum_of_the_task_table")
def test_a_vacuum_clears_the_dead_entries_a_busy_namespace_leaves_at_its_queue_head():
    make_namespace("busy")
    make_namespace("archive")
    # A large table with a small busy namespace: its dead rows sit on under 2%
    # of the heap's pages, where a vacuum with PostgreSQL's default
    # index_cleanup=auto would skip the indexes and leave the dead entries.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tasks_app_task (id, namespace_id, timeout, retries_left, status) "
            "SELECT 'a' || g, 'archive', 300, 0, 'done' FROM generate_series(1, 300000) AS g"
        )
    make_tasks("busy", 2000)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE tasks_app_task")
    fresh = capture_scan_buffers("busy")

    # Workers churn through the queue: each capture and release leaves the
    # task's previous index entry behind, at the head where the next capture
    # starts its scan.
    for _ in range(190):
        leased = capture_tasks(namespace_id="busy", limit=10)
        release_tasks(task_ids=[task.id for task in leased], status="idle")
    churned = capture_scan_buffers("busy")
    # Clearly more than a vacuum may leave (below), so the test can fail.
    assert churned >= fresh + 4

    with connection.cursor() as cursor:
        # A plain VACUUM, as autovacuum runs it: the table's own settings apply.
        cursor.execute("VACUUM tasks_app_task")
    assert capture_scan_buffers("busy") <= fresh + 1


@pytest.mark.django_db
def test_release_locks_in_id_order_whatever_plan_the_planner_picks():
    """With the id index, a scan for `id = ANY(...)` already yields id order;
    without it (a bitmap or sequential scan yields table order), the fence
    sorts before it locks, so overlapping releases never lock in opposite orders."""
    make_namespace("ns")
    make_tasks("ns", 1_000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_task")
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute("SET LOCAL enable_indexonlyscan = off")
        plan = explain(
            lease.RELEASE,
            lease.release_params(["t000009", "t000001"], None, "done"),
        )
    locked = plan[plan.index("CTE locked") : plan.index("CTE decided")]
    assert "LockRows" in locked
    assert "Sort Key: t_1.id" in locked or "Sort Key: t.id" in locked, locked


@pytest.mark.django_db
def test_the_history_prune_does_nothing_at_all_without_a_task_past_ten_attempts():
    """A one-time filter gates the prune: whatever join a prepared
    statement's generic plan chose (over an empty attempt table, a scan of
    the whole table), it never runs when no task is past HISTORY attempts."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    for statement in (lease.RELEASE, lease.CAPTURE, lease.RECLAIM_EXPIRED):
        params = {
            lease.RELEASE: lease.release_params(["t1"], None, "failed"),
            lease.CAPTURE: lease.capture_params("ns", 10),
            lease.RECLAIM_EXPIRED: {"batch": 10},
        }[statement]
        plan = explain(statement, params)
        pruned = plan[plan.index("CTE pruned") :]
        # Up to the next CTE of the statement (those sit at the top level).
        end = pruned.find("\n  CTE ")
        assert "One-Time Filter" in (pruned if end < 0 else pruned[:end]), plan
