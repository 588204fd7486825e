"""Concurrent captures and releases, with real threads on their own connections.

These run outside a wrapping test transaction (`transaction=True`): inside
one, row locks would not be contended the way they are in production.
"""

import json
import threading
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from apikeys_app.services import create_token
from tasks_app.services import Lease, capture_tasks, release_tasks
from tests.factories import make_namespace, make_tasks

pytestmark = pytest.mark.django_db(transaction=True)

WORKERS = 16


def run_in_threads(count: int, target) -> list:
    barrier = threading.Barrier(count)

    def worker(index: int):
        barrier.wait()
        try:
            return target(index)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(worker, range(count)))


def test_sixteen_workers_drain_a_namespace_each_task_handed_out_once():
    make_namespace("ns")
    make_tasks("ns", 3000)

    def drain(_: int) -> list[str]:
        got: list[str] = []
        while True:
            rows = capture_tasks(namespace_id="ns", limit=7)
            assert len(rows) <= 7
            if not rows:
                return got
            got += [row.id for row in rows]

    per_worker = run_in_threads(WORKERS, drain)
    handed_out = Counter(task_id for ids in per_worker for task_id in ids)
    assert len(handed_out) == 3000
    assert set(handed_out.values()) == {1}
    assert sum(1 for ids in per_worker if ids) > 1  # the work was really shared


def test_sixteen_http_workers_drain_a_namespace_each_task_handed_out_once(live_server):
    make_namespace("ns")
    make_tasks("ns", 2000)
    _, secret = create_token(name="load")

    def call(method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            live_server.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            return json.loads(response.read())

    def work(_: int) -> list[str]:
        got: list[str] = []
        while True:
            tasks = call("GET", "/v1/task/capture?namespace_id=ns&limit=25")["list"]
            if not tasks:
                return got
            ids = [task["id"] for task in tasks]
            released = call("PUT", "/v1/task/release", {"status": "done", "task_ids": ids})
            assert released["errors"] == []
            got += ids

    per_worker = run_in_threads(WORKERS, work)
    handed_out = Counter(task_id for ids in per_worker for task_id in ids)
    assert len(handed_out) == 2000
    assert set(handed_out.values()) == {1}
    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM tasks_app_task GROUP BY status")
        assert dict(cursor.fetchall()) == {"done": 2000}


def test_overlapping_release_batches_in_different_orders_do_not_deadlock():
    make_namespace("ns")
    make_tasks("ns", 400)
    ids = [row.id for row in capture_tasks(namespace_id="ns", limit=400)]

    def release(index: int) -> int:
        # Every worker releases the same ids, half of them in reverse order.
        batch = ids if index % 2 else list(reversed(ids))
        return len(release_tasks(task_ids=batch, status="done").released)

    released = run_in_threads(8, release)
    assert sum(released) == 400  # each task released exactly once, no deadlock error


def test_workers_capturing_and_handing_back_never_hold_a_task_at_the_same_time():
    make_namespace("ns")
    make_tasks("ns", 60, retries_left=5)
    held: set[str] = set()
    guard = threading.Lock()
    collisions: list[str] = []
    leases = Counter[str]()

    def work(_: int) -> None:
        for _round in range(30):
            ids = [row.id for row in capture_tasks(namespace_id="ns", limit=5)]
            with guard:
                collisions.extend(i for i in ids if i in held)
                held.update(ids)
                leases.update(ids)
            # Forget the lease before handing it back: from the commit of the
            # release on, another worker may legitimately hold the task.
            with guard:
                held.difference_update(ids)
            if ids:
                assert len(release_tasks(task_ids=ids, status="idle").released) == len(ids)

    run_in_threads(WORKERS, work)
    assert collisions == []
    assert sum(leases.values()) > 60  # tasks really went round more than once
    with connection.cursor() as cursor:
        cursor.execute("SELECT status, min(retries_left) FROM tasks_app_task GROUP BY status")
        assert cursor.fetchall() == [("idle", 5)]  # handing back never charges a retry


def test_sixteen_workers_never_hold_more_leases_than_max_in_flight():
    from namespaces_app.services import Settings, change_namespace
    from tasks_app.models import Attempt

    limit = 4
    make_namespace("ns")
    # Every ended attempt kept, so the lease windows can be read back.
    change_namespace(namespace_id="ns", settings=Settings(history="all", max_in_flight=limit))
    make_tasks("ns", 120)

    def work(index: int) -> int:
        done = 0
        empty = 0
        while empty < 20:
            rows = capture_tasks(namespace_id="ns", limit=1 + index % 3)
            if not rows:
                empty += 1
                continue
            empty = 0
            leases = [Lease(row.id, row.lease_token) for row in rows]
            assert release_tasks(status="done", leases=leases).errors == []
            done += len(rows)
        return done

    finished = run_in_threads(WORKERS, work)
    assert sum(finished) == 120
    # The most leases valid at once, from the server's own lease windows:
    # each attempt from its capture to its release.
    events = sorted(
        [(a.captured_at, 1) for a in Attempt.objects.all()]
        + [(a.ended_at, -1) for a in Attempt.objects.all()],
        key=lambda event: (event[0], event[1]),
    )
    held = most = 0
    for _, change in events:
        held += change
        most = max(most, held)
    assert Attempt.objects.count() == 120
    # Reached, so the workers did contend for the slots; never passed.
    assert most == limit
