"""Sixteen workers on their own connections, some stalling past their leases.

Every release is fenced with its lease token. A stalled worker's lease
expires and goes to another worker; its late release must then change
nothing, so the new holder's release still goes through.
"""

import random
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from django.db import connections

from tasks_app.models import Task
from tasks_app.services import Lease, LeaseProblem, capture_tasks, release_tasks
from tests.factories import make_namespace, make_tasks

pytestmark = pytest.mark.django_db(transaction=True)

WORKERS = 16
STALLERS = 4  # workers 0-3 hold every task past its lease
TASKS = 40
TIMEOUT = 3  # seconds of every lease
STALL = 3.6  # a staller's hold: its lease has expired when it releases
# Everyone else's hold: well inside the lease, and longer than a staller's
# overrun, so a stalled lease that another worker took over is still held by
# that worker when the staller's late release arrives.
HOLD = (0.8, 1.5)


@dataclass
class Log:
    captures: list[tuple[str, str, int, int]] = field(
        default_factory=list
    )  # id, token, attempt, worker
    released: list[tuple[str, str, int]] = field(default_factory=list)  # id, token, worker
    refused: list[tuple[str, str, int, LeaseProblem, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def test_only_the_holder_of_the_latest_lease_finishes_a_task():
    make_namespace("ns")
    make_tasks("ns", TASKS, timeout=TIMEOUT, retries_left=1000)
    log = Log()
    barrier = threading.Barrier(WORKERS)
    deadline = time.monotonic() + 90

    def work(worker: int) -> None:
        rng = random.Random(worker)
        barrier.wait()
        try:
            while time.monotonic() < deadline:
                rows = capture_tasks(namespace_id="ns", limit=1)
                if not rows:
                    if not Task.objects.exclude(status="done").exists():
                        return
                    time.sleep(0.05)
                    continue
                (row,) = rows
                with log.lock:
                    log.captures.append((row.id, row.lease_token, row.attempt, worker))
                time.sleep(STALL if worker < STALLERS else rng.uniform(*HOLD))
                result = release_tasks(
                    status="done", leases=[Lease(id=row.id, lease_token=row.lease_token)]
                )
                with log.lock:
                    for task in result.released:
                        log.released.append((task.id, row.lease_token, worker))
                    for error in result.errors:
                        log.refused.append(
                            (error.id, row.lease_token, worker, error.code, error.detail)
                        )
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(work, range(WORKERS)))

    # Every task is done, by exactly one release.
    assert set(Task.objects.values_list("status", flat=True)) == {"done"}
    finished = Counter(task_id for task_id, _, _ in log.released)
    assert len(finished) == TASKS
    assert set(finished.values()) == {1}

    # That release carried the token of the task's latest capture.
    latest: dict[str, tuple[int, str]] = {}
    for task_id, token, attempt, _ in log.captures:
        latest[task_id] = max(latest.get(task_id, (0, "")), (attempt, token))
    for task_id, token, _ in log.released:
        assert token == latest[task_id][1], task_id

    # Tokens are unique per capture; attempts count captures.
    assert len({token for _, token, _, _ in log.captures}) == len(log.captures)
    attempts = defaultdict(list)
    for task_id, _, attempt, _ in log.captures:
        attempts[task_id].append(attempt)
    for task_id, seen in attempts.items():
        assert sorted(seen) == list(range(1, len(seen) + 1)), task_id

    # No worker that stayed inside its lease was refused: no stale release
    # ended its lease under it.
    assert [entry for entry in log.refused if entry[2] >= STALLERS] == []
    # Every refusal was of a stale token, and some came while the task was
    # under another worker's valid lease (the case a token exists for).
    assert log.refused, "no staller was taken over: the test proved nothing"
    assert {entry[3] for entry in log.refused} == {LeaseProblem.STALE_LEASE}
    assert any("now in_progress" in entry[4] for entry in log.refused)
