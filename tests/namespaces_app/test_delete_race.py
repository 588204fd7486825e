"""Deleting a namespace while a task is being registered into it: both orders, forced.

Each order is made to happen by a third session holding the lock the first
of the two will wait on after it has taken its namespace lock, so both
outcomes are reached on every run, and each is checked:
- the registration holds the namespace first: it commits, and the delete
  then removes its task with the others (nothing acknowledged survives a
  delete, nothing is left behind);
- the delete holds the namespace first: the registration waits, then is
  refused as an unknown namespace, and no task of it exists.
"""

import concurrent.futures
import time

import psycopg
import pytest

from namespaces_app.services import delete_namespace
from tasks_app.exceptions import UnknownNamespaceForTask
from tasks_app.models import Task
from tasks_app.services import NewTask, register_tasks
from tests.factories import make_namespace, make_task
from tests.utils import database_url_of_test_database

pytestmark = pytest.mark.django_db(transaction=True)


def waiting_sessions(observer: psycopg.Connection) -> int:
    row = observer.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for_waiters(observer: psycopg.Connection, count: int) -> None:
    deadline = time.monotonic() + 20
    while waiting_sessions(observer) < count:
        assert time.monotonic() < deadline, f"fewer than {count} sessions reached their lock"
        time.sleep(0.02)


def in_thread(pool: concurrent.futures.Executor, function, **kwargs):
    def run():
        from django.db import connection

        try:
            return function(**kwargs)
        finally:
            connection.close()

    return pool.submit(run)


def test_a_registration_holding_the_namespace_commits_and_the_delete_takes_its_task():
    make_namespace("ns")
    make_namespace("other")
    make_task("old", "ns")
    url = database_url_of_test_database()
    with (
        psycopg.connect(url, autocommit=True) as observer,
        psycopg.connect(url) as blocker,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        # An uncommitted task of the same id: the registration, once it holds
        # its namespace, waits on the unique index.
        blocker.execute(
            "INSERT INTO tasks_app_task (id, namespace_id, timeout, retries_left, status,"
            " available_at) VALUES ('x', 'other', 60, 1, 'idle', now())"
        )
        registration = in_thread(pool, register_tasks, tasks=[NewTask(id="x", namespace_id="ns")])
        wait_for_waiters(observer, 1)
        deletion = in_thread(pool, delete_namespace, namespace_id="ns")
        wait_for_waiters(observer, 2)
        blocker.rollback()
        (registered,) = registration.result(timeout=30)
        deleted = deletion.result(timeout=30)
    assert registered.id == "x"
    assert deleted == 2  # "old" and the task registered just before the delete
    assert not Task.objects.filter(namespace_id="ns").exists()


def test_a_delete_holding_the_namespace_wins_and_the_registration_is_refused():
    make_namespace("ns")
    make_task("held", "ns")
    url = database_url_of_test_database()
    with (
        psycopg.connect(url, autocommit=True) as observer,
        psycopg.connect(url) as blocker,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        # A lock on one of the namespace's tasks: the delete, once it holds
        # the namespace, waits on it before removing the tasks.
        blocker.execute("SELECT 1 FROM tasks_app_task WHERE id = 'held' FOR UPDATE")
        deletion = in_thread(pool, delete_namespace, namespace_id="ns")
        wait_for_waiters(observer, 1)
        registration = in_thread(
            pool, register_tasks, tasks=[NewTask(id="late", namespace_id="ns")]
        )
        wait_for_waiters(observer, 2)
        blocker.rollback()
        deleted = deletion.result(timeout=30)
        with pytest.raises(UnknownNamespaceForTask):
            registration.result(timeout=30)
    assert deleted == 1
    assert not Task.objects.filter(pk="late").exists()
    assert not Task.objects.exists()
