"""The fence under a lock held by another transaction, on its own connection.

Each test holds a change to a task open in one thread, starts a release or
extend in another, checks in pg_stat_activity that it really waits on the
lock, then commits: the fenced statement must decide on the row as that
commit left it.
"""

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections, transaction

from tasks_app.services import (
    Lease,
    LeaseProblem,
    OperatorAction,
    apply_operator_action,
    capture_tasks,
    extend_leases,
    release_tasks,
)
from tasks_app.sweeper import reclaim_expired_leases
from tests.factories import age_task, make_namespace, make_task

pytestmark = pytest.mark.django_db(transaction=True)


def waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return int(cursor.fetchone()[0])


def run_against_an_open_change(
    change: Callable[[], Any], fenced: Callable[[], Any], *, expect_wait: bool = True
) -> tuple[Any, Any]:
    """Run `change` in an open transaction, then `fenced`; commit `change`; return both results."""
    results: dict[str, Any] = {}
    changed = threading.Event()
    commit = threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                results["change"] = change()
                changed.set()
                assert commit.wait(30)
        finally:
            connections.close_all()

    def victim() -> None:
        try:
            results["fenced"] = fenced()
        finally:
            connections.close_all()

    holding = threading.Thread(target=holder)
    holding.start()
    assert changed.wait(30)
    waiting = threading.Thread(target=victim)
    waiting.start()
    if expect_wait:
        deadline = time.monotonic() + 30
        while not waiting_on_a_lock():
            assert time.monotonic() < deadline, "the fenced statement never waited on the lock"
            time.sleep(0.01)
        assert waiting.is_alive()
    else:
        waiting.join(30)
        assert not waiting.is_alive(), "the fenced statement waited on a row it cannot change"
    commit.set()
    holding.join(30)
    waiting.join(30)
    return results["change"], results["fenced"]


def state(task_id: str) -> tuple[str, str | None]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, lease_token::text FROM tasks_app_task WHERE id = %s", [task_id]
        )
        return cursor.fetchone()


@pytest.fixture
def expired_lease():
    make_namespace("ns")
    make_task("a", timeout=1, retries_left=5)
    (row,) = capture_tasks(namespace_id="ns", limit=1)
    age_task("a", 3600)
    return Lease(id="a", lease_token=row.lease_token)


def codes(result: Any) -> list[LeaseProblem]:
    return [error.code for error in result.errors]


def test_a_release_waiting_on_a_recapture_is_stale_and_leaves_the_new_lease(expired_lease):
    (new,), result = run_against_an_open_change(
        lambda: capture_tasks(namespace_id="ns", limit=1),
        lambda: release_tasks(status="done", leases=[expired_lease]),
    )
    assert codes(result) == [LeaseProblem.STALE_LEASE]
    assert state("a") == ("in_progress", new.lease_token)


def test_an_extend_waiting_on_a_recapture_is_stale(expired_lease):
    (new,), result = run_against_an_open_change(
        lambda: capture_tasks(namespace_id="ns", limit=1),
        lambda: extend_leases(leases=[expired_lease], timeout=600),
    )
    assert codes(result) == [LeaseProblem.STALE_LEASE]
    assert state("a") == ("in_progress", new.lease_token)


def test_a_release_waiting_on_its_own_extend_releases_the_extended_lease(expired_lease):
    _, result = run_against_an_open_change(
        lambda: extend_leases(leases=[expired_lease], timeout=600),
        lambda: release_tasks(status="done", leases=[expired_lease]),
    )
    assert [task.status for task in result.released] == ["done"]
    assert state("a")[0] == "done"


def test_an_extend_waiting_on_a_release_is_not_in_progress(expired_lease):
    _, result = run_against_an_open_change(
        lambda: release_tasks(status="failed", leases=[expired_lease]),
        lambda: extend_leases(leases=[expired_lease], timeout=600),
    )
    assert codes(result) == [LeaseProblem.NOT_IN_PROGRESS]
    assert result.errors[0].detail == "Task is failed, not in_progress; nothing changed."
    assert state("a")[0] == "failed"


def test_a_release_waiting_on_an_operator_cancel_is_stale(expired_lease):
    _, result = run_against_an_open_change(
        lambda: apply_operator_action(action=OperatorAction.CANCEL_LEASE, task_ids=["a"]),
        lambda: release_tasks(status="done", leases=[expired_lease]),
    )
    assert codes(result) == [LeaseProblem.STALE_LEASE]
    assert state("a") == ("idle", None)


def test_a_release_waiting_on_the_sweeper_is_not_in_progress(expired_lease):
    _, result = run_against_an_open_change(
        reclaim_expired_leases, lambda: release_tasks(status="done", leases=[expired_lease])
    )
    assert codes(result) == [LeaseProblem.NOT_IN_PROGRESS]
    assert state("a")[0] == "failed"


def test_a_release_waiting_on_a_delete_is_not_found(expired_lease):
    def delete() -> None:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM tasks_app_task WHERE id = 'a'")

    _, result = run_against_an_open_change(
        delete, lambda: release_tasks(status="done", leases=[expired_lease])
    )
    assert codes(result) == [LeaseProblem.NOT_FOUND]


def test_the_seed_form_waiting_on_a_recapture_ends_the_new_lease(expired_lease):
    # What the README warns of: task_ids cannot tell holders apart.
    _, result = run_against_an_open_change(
        lambda: capture_tasks(namespace_id="ns", limit=1),
        lambda: release_tasks(status="done", task_ids=["a"]),
    )
    assert [task.status for task in result.released] == ["done"]


def test_a_release_never_waits_on_a_task_that_is_not_in_progress(db):
    make_namespace("ns")
    make_task("done", status="done")

    def touch() -> None:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE tasks_app_task SET timeout = 7 WHERE id = 'done'")

    _, result = run_against_an_open_change(
        touch, lambda: release_tasks(status="done", task_ids=["done"]), expect_wait=False
    )
    assert codes(result) == [LeaseProblem.NOT_IN_PROGRESS]
