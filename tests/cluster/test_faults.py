"""Processes of the cluster killed with -9 while requests go through HAProxy.

A prober sends requests back to back, each on a new connection with a short
timeout, and records when each was sent and answered. The supervisor starts
the killed process again (TASKQ_SUPERVISOR_RESTART=1), under a new pid in
stack.json.
"""

import http.client
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count, pairwise

import pytest

from apikeys_app.services import create_token
from tasks_app.models import Task
from tests.cluster.stack import (
    Answer,
    Cluster,
    answers_200,
    group_alive,
    load_supervisor,
    request,
    wait_for,
)
from tests.factories import make_namespace

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@dataclass(frozen=True)
class Outcome:
    label: str
    sent: float
    received: float
    answer: Answer | None  # None: refused, reset or timed out


class Prober:
    """`send(label)` on a thread, again and again (label: `prefix-n`), until
    the `with` block ends."""

    def __init__(self, send: Callable[[str], Answer], *, prefix: str, timeout: float) -> None:
        self.send = send
        self.prefix = prefix
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for n in count():
            if self.stopped.is_set():
                return
            label = f"{self.prefix}-{n}"
            sent = time.monotonic()
            try:
                answer = self.send(label)
            except (OSError, http.client.HTTPException):
                self.outcomes.append(Outcome(label, sent, time.monotonic(), None))
            else:
                self.outcomes.append(Outcome(label, sent, time.monotonic(), answer))

    def __enter__(self) -> "Prober":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=self.timeout + 10)
        self.ended = time.monotonic()

    def successes_after(self, instant: float, status: int) -> int:
        return sum(
            1
            for o in list(self.outcomes)
            if o.sent > instant and o.answer is not None and o.answer.status == status
        )

    def longest_gap(self, status: int) -> float:
        """The longest time without an answer of `status`, from the first to the end."""
        times = [o.received for o in self.outcomes if o.answer and o.answer.status == status]
        assert times, "no request succeeded"
        times.append(self.ended)
        return max(later - earlier for earlier, later in pairwise(times))


def test_haproxy_routes_around_a_killed_app_server_and_back_to_it(cluster: Cluster) -> None:
    make_namespace("routed")
    _, secret = create_token(name="prober")
    route = 'taskq_http_requests_total{code="200",method="GET",route="v1/namespace/{pk}"}'

    def read(label: str) -> Answer:
        return request(cluster.port, "GET", "/v1/namespace/routed", token=secret, timeout=0.5)

    killed = cluster.pid("app1")
    with Prober(read, prefix="read", timeout=0.5) as prober:
        wait_for(lambda: prober.successes_after(0, 200) >= 20, 10, "the prober runs")
        os.kill(killed, signal.SIGKILL)
        at = time.monotonic()
        restarted = wait_for(
            lambda: cluster.pid("app1") != killed and cluster.pid("app1"), 10, "app1 restarted"
        )
        # Its workers went with it (the supervisor kills its process group):
        # what answers on its port from now on is the new server.
        wait_for(lambda: not group_alive(killed), 5, "the killed server's workers gone")
        wait_for(lambda: answers_200(cluster.servers["app1"]), 30, "app1 answers /healthz")
        # The new server's counts start from nothing (gunicorn.conf.py's
        # on_starting): HAProxy sends it the prober's requests again.
        wait_for(lambda: cluster.metric("app1", route) > 0, 10, "HAProxy routes to app1")
        back = time.monotonic()
        wait_for(lambda: prober.successes_after(back, 200) >= 20, 10, "more answers")
    # Still the same new server: not one that failed and was started again.
    record = cluster.state()["processes"]["app1"]
    assert record["pid"] == restarted and load_supervisor().is_alive(record), record
    gap = prober.longest_gap(200)
    failed = [
        (round(o.sent - at, 3), o.answer and o.answer.status)
        for o in prober.outcomes
        if not (o.answer and o.answer.status == 200)
    ]
    assert gap < 1.0, f"{gap:.3f} s without an answer; failed (s after the kill, status): {failed}"
    # A request the dead server refused is sent to another (retry-on
    # conn-failure, redispatch): only those it had taken can fail, the one it
    # was serving and any its successor took before its workers were up.
    assert len(failed) <= 3, failed


def test_a_killed_pgbouncer_costs_a_moment_of_503s_and_no_acknowledged_task(
    cluster: Cluster,
) -> None:
    make_namespace("pooled")
    _, secret = create_token(name="registrar")

    def register(task_id: str) -> Answer:
        body = {"id": task_id, "namespace_id": "pooled"}
        return request(cluster.port, "POST", "/v1/task", token=secret, body=body, timeout=2)

    registered_before = [f"before-{n}" for n in range(20)]
    for task_id in registered_before:
        answer = register(task_id)
        assert answer.status == 201, answer

    killed = cluster.pid("pgbouncer")
    with Prober(register, prefix="during", timeout=2) as prober:
        wait_for(lambda: prober.successes_after(0, 201) >= 20, 10, "the prober runs")
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: cluster.pid("pgbouncer") != killed, 10, "PgBouncer restarted")
        restarted = time.monotonic()
        wait_for(lambda: prober.successes_after(restarted, 201) >= 20, 10, "registrations again")

    unanswered = [o.label for o in prober.outcomes if o.answer is None]
    assert unanswered == [], f"no answer to {unanswered}"
    refused = [o for o in prober.outcomes if o.answer is not None and o.answer.status != 201]
    for o in refused:
        assert o.answer is not None
        assert o.answer.status == 503, (o.label, o.answer)
        assert int(o.answer.headers.get("retry-after", "0")) >= 1, (o.label, o.answer)
        # The API's error shape (JSON with a code), not a proxy's page.
        assert o.answer.headers.get("content-type") == "application/json", (o.label, o.answer)
        assert "code" in o.answer.json(), (o.label, o.answer)
    gap = prober.longest_gap(201)
    assert gap < 3.0, f"{gap:.3f} s without a registration ({len(refused)} refused)"
    acknowledged = registered_before + [
        o.label for o in prober.outcomes if o.answer is not None and o.answer.status == 201
    ]
    stored = set(Task.objects.filter(pk__in=acknowledged).values_list("pk", flat=True))
    assert sorted(set(acknowledged) - stored) == []
