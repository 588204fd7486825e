"""Long polling against the real web server: captures with `wait`.

Each wake-up cause (registration, import, a failed or idle release, an
operator's requeue, a delayed task's turn, a lease's expiry), the timeout,
exactly-once among several waiters, waking across two servers, and a client
that leaves. Waiting captures run in threads of the test, each on its own
connection; the clock is real here (the server's sessions are its own).
"""

import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from apikeys_app.services import create_token
from namespaces_app.services import Settings, change_namespace
from tasks_app.bulk import import_tasks
from tasks_app.models import Task
from tasks_app.services import (
    Lease,
    NewTask,
    OperatorAction,
    apply_operator_action,
    capture_tasks,
    pause_namespace,
    purge_namespace,
    register_tasks,
    release_tasks,
    resume_namespace,
)
from tests.factories import make_namespace
from tests.test_web_server import serve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def servers(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, int]]:
    """Two servers (a web process each) on one database."""
    first = serve(tmp_path_factory.mktemp("a"), WEB_CONCURRENCY="1")
    second = serve(tmp_path_factory.mktemp("b"), WEB_CONCURRENCY="1")
    ports = (next(first), next(second))
    yield ports
    for server in (first, second):
        next(server, None)


@pytest.fixture
def token() -> str:
    _, secret = create_token(name="waiter")
    return secret


def call(port: int, token: str, method: str, path: str, body=None, timeout: float = 30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    try:
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


class Waiting:
    """A capture with `wait` in a thread: its answer and how long it took."""

    def __init__(self, port: int, token: str, wait: int, namespace: str = "ns", limit=1):
        self.answer: tuple[int, object] | None = None
        self.seconds = 0.0
        path = f"/v1/task/capture?namespace_id={namespace}&limit={limit}&wait={wait}"

        def run() -> None:
            started = time.monotonic()
            self.answer = call(port, token, "POST", path)
            self.seconds = time.monotonic() - started

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def result(self) -> list[str]:
        self.thread.join(timeout=40)
        assert self.answer is not None
        status, body = self.answer
        assert status == 200, body
        return [task["id"] for task in body["list"]]  # type: ignore[index]


def settle() -> None:
    # Long enough for a waiting capture to have tried once and be waiting.
    time.sleep(0.5)


def task(task_id: str, **fields) -> list[NewTask]:
    return [NewTask(id=task_id, namespace_id="ns", **fields)]


def test_without_wait_an_empty_capture_does_not_wait(servers, token):
    make_namespace("ns")
    answered = []

    def capture() -> None:
        answered.append(call(servers[0], token, "POST", "/v1/task/capture?namespace_id=ns"))

    thread = threading.Thread(target=capture)
    thread.start()
    # An answer that does not wait comes at once; this waits for it, or two
    # seconds of a wait the capture must not make.
    thread.join(timeout=2)
    # Had the capture waited, it would lease this task.
    register_tasks(tasks=task("t1"))
    thread.join(timeout=30)
    assert answered == [(200, {"list": []})]
    assert Task.objects.get(pk="t1").status == "idle"


def test_a_wait_with_nothing_answers_empty_after_its_seconds(servers, token):
    make_namespace("ns")
    waiter = Waiting(servers[0], token, wait=1)
    assert waiter.result() == []
    assert 0.95 <= waiter.seconds < 3


@pytest.mark.parametrize("wait", ["21", "-1", "x", "1.5"])
def test_a_wait_out_of_bounds_is_a_400(servers, token, wait):
    make_namespace("ns")
    status, body = call(servers[0], token, "POST", f"/v1/task/capture?namespace_id=ns&wait={wait}")
    assert status == 400
    assert "wait" in body["errors"]


def test_a_registration_wakes_a_waiter(servers, token):
    make_namespace("ns")
    waiter = Waiting(servers[0], token, wait=10)
    settle()
    register_tasks(tasks=task("t1"))
    assert waiter.result() == ["t1"]
    assert waiter.seconds < 2


def test_a_registration_through_another_server_wakes_a_waiter(servers, token):
    make_namespace("ns")
    waiter = Waiting(servers[0], token, wait=10)
    settle()
    status, _ = call(servers[1], token, "POST", "/v1/task", {"id": "t1", "namespace_id": "ns"})
    assert status == 201
    assert waiter.result() == ["t1"]
    assert waiter.seconds < 2


def test_an_import_wakes_a_waiter(servers, token):
    make_namespace("ns")
    waiter = Waiting(servers[0], token, wait=10)
    settle()
    result = import_tasks(source=io.BytesIO(b"id,namespace_id\nt1,ns\n"), fmt="csv")
    assert result.committed
    assert waiter.result() == ["t1"]
    assert waiter.seconds < 2


@pytest.mark.parametrize("status", ["failed", "idle"])
def test_a_release_that_hands_the_task_back_wakes_a_waiter(servers, token, status):
    make_namespace("ns")
    register_tasks(tasks=task("t1"))
    (leased,) = capture_tasks(namespace_id="ns", limit=1)
    waiter = Waiting(servers[0], token, wait=10)
    settle()
    release_tasks(status=status, task_ids=[leased.id])
    assert waiter.result() == ["t1"]
    assert waiter.seconds < 2


def test_a_requeue_by_an_operator_wakes_a_waiter(servers, token):
    make_namespace("ns")
    register_tasks(tasks=task("t1", status="done"))
    waiter = Waiting(servers[0], token, wait=10)
    settle()
    apply_operator_action(action=OperatorAction.REQUEUE, task_ids=["t1"])
    assert waiter.result() == ["t1"]
    assert waiter.seconds < 2


def test_a_delayed_task_wakes_a_waiter_when_its_turn_comes(servers, token):
    make_namespace("ns")
    waiter = Waiting(servers[0], token, wait=10)
    settle()
    registered = time.monotonic()
    register_tasks(tasks=task("t1", delay=1))
    assert waiter.result() == ["t1"]
    came = time.monotonic() - registered
    assert 0.9 <= came < 1.6, came


def test_an_abandoned_lease_goes_to_a_waiter_when_it_expires_not_at_a_sweep(servers, token):
    make_namespace("ns")
    register_tasks(tasks=task("t1", timeout=1))
    (leased,) = capture_tasks(namespace_id="ns", limit=1)
    expires = Task.objects.get(pk="t1").lease_expires_at
    assert expires is not None
    waiter = Waiting(servers[0], token, wait=10)
    waiter.result()
    # The sweeper is not running here: only the waiter's own timer woke it.
    assert Task.objects.get(pk="t1").attempt == 2
    assert Task.objects.get(pk="t1").updated_at - expires < timedelta(milliseconds=600)
    assert leased.attempt == 1


def test_one_task_goes_to_one_of_several_waiters_and_the_rest_keep_waiting(servers, token):
    make_namespace("ns")
    waiters = [Waiting(servers[n % 2], token, wait=2) for n in range(6)]
    settle()
    register_tasks(tasks=task("t1"))
    time.sleep(0.5)
    register_tasks(tasks=task("t2"))
    results = [w.result() for w in waiters]
    got = sorted(task_id for ids in results for task_id in ids)
    assert got == ["t1", "t2"]
    assert sum(1 for ids in results if ids) == 2
    # The others waited out their two seconds.
    assert min(w.seconds for w, ids in zip(waiters, results, strict=True) if not ids) > 1.9


def test_a_burst_reaches_every_waiter_each_task_once(servers, token):
    make_namespace("ns")
    waiters = [Waiting(servers[n % 2], token, wait=10) for n in range(20)]
    settle()
    register_tasks(tasks=[NewTask(id=f"t{n:02d}", namespace_id="ns") for n in range(20)])
    got = [w.result() for w in waiters]
    assert sorted(task_id for ids in got for task_id in ids) == [f"t{n:02d}" for n in range(20)]
    assert all(len(ids) == 1 for ids in got)
    assert max(w.seconds for w in waiters) < 5


def test_a_client_that_leaves_stops_its_wait_and_leases_nothing(servers, token):
    make_namespace("ns")
    sock = socket.create_connection(("127.0.0.1", servers[0]))
    sock.sendall(
        b"POST /v1/task/capture?namespace_id=ns&wait=10 HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    settle()
    sock.close()
    settle()
    register_tasks(tasks=task("t1"))
    time.sleep(0.5)
    assert Task.objects.get(pk="t1").status == "idle"
    # And the server still serves waiters.
    waiter = Waiting(servers[0], token, wait=5)
    assert waiter.result() == ["t1"]


def test_a_paused_namespace_keeps_its_waiters_waiting_until_it_is_resumed(servers, token):
    make_namespace("ns")
    pause_namespace(namespace_id="ns")
    register_tasks(tasks=task("t1"))
    waiter = Waiting(servers[1], token, wait=10)
    settle()
    # Paused: the task is there, the waiter is not answered.
    assert waiter.thread.is_alive()
    assert Task.objects.get(pk="t1").status == "idle"
    resumed = time.monotonic()
    resume_namespace(namespace_id="ns")
    assert waiter.result() == ["t1"]
    assert time.monotonic() - resumed < 1


def test_a_slot_freed_under_max_in_flight_wakes_a_waiter(servers, token):
    make_namespace("ns")
    change_namespace(namespace_id="ns", settings=Settings(max_in_flight=1))
    register_tasks(tasks=task("t1") + task("t2"))
    (held,) = capture_tasks(namespace_id="ns", limit=1)
    waiter = Waiting(servers[0], token, wait=10)
    settle()
    assert waiter.thread.is_alive()  # the namespace is full
    freed = time.monotonic()
    release_tasks(status="done", leases=[Lease(held.id, held.lease_token)])
    assert waiter.result() == ["t2"]
    assert time.monotonic() - freed < 1


def test_raising_max_in_flight_wakes_a_waiter(servers, token):
    make_namespace("ns")
    change_namespace(namespace_id="ns", settings=Settings(max_in_flight=1))
    register_tasks(tasks=task("t1") + task("t2"))
    capture_tasks(namespace_id="ns", limit=1)
    waiter = Waiting(servers[1], token, wait=10)
    settle()
    assert waiter.thread.is_alive()  # the namespace is full
    raised = time.monotonic()
    change_namespace(namespace_id="ns", settings=Settings(max_in_flight=2))
    assert waiter.result() == ["t2"]
    assert time.monotonic() - raised < 1


def test_purging_a_full_namespaces_leases_wakes_a_waiter(servers, token):
    make_namespace("ns")
    change_namespace(namespace_id="ns", settings=Settings(max_in_flight=1))
    register_tasks(tasks=task("t1") + task("t2"))
    capture_tasks(namespace_id="ns", limit=1)
    waiter = Waiting(servers[0], token, wait=10)
    settle()
    assert waiter.thread.is_alive()
    purged = time.monotonic()
    assert purge_namespace(namespace_id="ns", states=["in_progress"]) == {"in_progress": 1}
    assert waiter.result() == ["t2"]
    assert time.monotonic() - purged < 1
