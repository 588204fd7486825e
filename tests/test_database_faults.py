"""Real database faults under the real server: 503 with Retry-After, never a 500.

The stack is gunicorn, as `make run` and production serve it, on a PostgreSQL
of this module's own (tests/pgcluster.py), which the tests stop, pause, make
read-only and lock against.
"""

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from django.db import connections, transaction
from taskq_client import Client

from taskq_project.api import exception_handler
from taskq_project.db_errors import CONFLICT, transient
from tests.factories import make_namespace, make_tasks
from tests.pgcluster import Cluster, free_port, wait_for

pytestmark = pytest.mark.slow

BASE_DIR = Path(__file__).resolve().parent.parent
# Short, so the lock test does not wait long; migrations lift it for themselves.
STATEMENT_TIMEOUT_MS = 1500


class Stack:
    def __init__(self, cluster: Cluster, port: int, token: str, process: subprocess.Popen) -> None:
        self.cluster = cluster
        self.port = port
        self.token = token
        self.process = process

    def call(self, method: str, path: str, body: object = None, timeout: float = 30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(
                method,
                path,
                body=None if body is None else json.dumps(body),
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json",
                },
            )
            response = conn.getresponse()
            raw = response.read()
            payload = json.loads(raw) if raw else None
            return response.status, response.headers, payload
        finally:
            conn.close()

    def healthy(self) -> bool:
        try:
            return self.call("GET", "/healthz", timeout=10)[0] == 200
        except OSError:
            return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    cluster = Cluster()
    cluster.start()
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE taskq")
    env = {
        **os.environ,
        "DATABASE_URL": cluster.url("taskq"),
        "TASKQ_DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
        "TASKQ_THROTTLE_WORKER": "none",
        "TASKQ_THROTTLE_OPERATOR": "none",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run(
        [*manage, "migrate", "--noinput"],
        cwd=BASE_DIR,
        env={**env, "TASKQ_DB_STATEMENT_TIMEOUT_MS": "0"},
        check=True,
        capture_output=True,
    )
    token = (
        subprocess.run(
            [*manage, "create_api_token", "faults"],
            cwd=BASE_DIR,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    port = free_port()
    log = (tmp_path_factory.mktemp("gunicorn") / "log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "taskq_project/gunicorn.conf.py"],
        cwd=BASE_DIR,
        env={**env, "PORT": str(port), "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "4"},
        stdout=log,
        stderr=log,
    )
    stack = Stack(cluster, port, token, process)
    try:
        wait_for(stack.healthy, timeout=60)
        assert stack.call("POST", "/v1/namespace", {"id": "ns"})[0] == 201
        tasks = [{"id": f"t{i}", "namespace_id": "ns", "timeout": 600} for i in range(20)]
        assert stack.call("POST", "/v1/task", tasks)[0] == 201
        yield stack
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
        cluster.destroy()


def assert_503(answer, code: str) -> None:
    status, headers, body = answer
    assert status == 503, (status, body)
    assert body["code"] == code, body
    assert body["detail"]
    assert int(headers["Retry-After"]) >= 1


REQUESTS = [
    ("GET", "/v1/namespace", None),
    ("GET", "/v1/task?namespace_id=ns", None),
    ("GET", "/v1/task/t1", None),
    ("POST", "/v1/task/capture", {"namespace_id": "ns", "limit": 1}),
    ("PUT", "/v1/task/release", {"status": "done", "task_ids": ["t1"]}),
    ("POST", "/v1/task", {"id": "new", "namespace_id": "ns"}),
]


def test_a_stopped_database_answers_503_with_retry_after_and_nothing_is_lost(stack):
    stack.cluster.stop("fast")
    try:
        # Several rounds: every gunicorn thread's connection meets the fault.
        for _ in range(3):
            for method, path, body in REQUESTS:
                assert_503(stack.call(method, path, body), "database_unavailable")
        status, headers, body = stack.call("GET", "/healthz")
        assert status == 503
        assert body["status"] == "down"
        assert int(headers["Retry-After"]) >= 1
    finally:
        stack.cluster.start()
    wait_for(stack.healthy)
    status, _, body = stack.call("GET", "/v1/task?namespace_id=ns&page_size=1000")
    assert status == 200
    assert {task["id"] for task in body["list"]} >= {f"t{i}" for i in range(20)}
    assert "new" not in {task["id"] for task in body["list"]}


def test_healthz_answers_within_seconds_while_the_database_is_paused(stack):
    pids = stack.cluster.pause()
    try:
        began = time.monotonic()
        status, _, body = stack.call("GET", "/healthz", timeout=20)
        elapsed = time.monotonic() - began
        assert status == 503
        assert body["database"]["ok"] is False
        assert elapsed < 5, elapsed
    finally:
        stack.cluster.resume(pids)
    wait_for(stack.healthy)


def test_a_read_only_database_answers_503_to_writes_and_serves_reads(stack):
    def reconnect_everyone(read_only: bool) -> None:
        with psycopg.connect(stack.cluster.url(), autocommit=True) as conn:
            value = "on" if read_only else "off"
            conn.execute(f"ALTER DATABASE taskq SET default_transaction_read_only = {value}")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'taskq' AND pid <> pg_backend_pid()"
            )

    reconnect_everyone(True)
    try:
        # The first answer of each thread may be the terminated connection's.
        for _ in range(4):
            stack.call("GET", "/v1/namespace")
        assert stack.call("GET", "/v1/task/t2")[0] == 200
        assert_503(
            stack.call("POST", "/v1/task", {"id": "ro", "namespace_id": "ns"}),
            "database_read_only",
        )
        assert_503(
            stack.call("POST", "/v1/task/capture", {"namespace_id": "ns"}), "database_read_only"
        )
    finally:
        reconnect_everyone(False)
    wait_for(lambda: stack.call("POST", "/v1/task", {"id": "rw", "namespace_id": "ns"})[0] == 201)


def test_a_statement_timeout_answers_503_and_changes_nothing(stack):
    status, _, body = stack.call("POST", "/v1/task/capture", {"namespace_id": "ns", "limit": 1})
    assert status == 200
    (task,) = body["list"]
    lease = {"id": task["id"], "lease_token": task["lease_token"]}
    with psycopg.connect(stack.cluster.url("taskq")) as blocker:
        blocker.execute("SELECT 1 FROM tasks_app_task WHERE id = %s FOR UPDATE", [task["id"]])
        began = time.monotonic()
        answer = stack.call("PUT", "/v1/task/release", {"status": "done", "leases": [lease]})
        assert time.monotonic() - began >= STATEMENT_TIMEOUT_MS / 1000 * 0.9
        assert_503(answer, "database_timeout")
        blocker.rollback()
    assert stack.call("GET", f"/v1/task/{task['id']}")[2]["status"] == "in_progress"
    status, _, body = stack.call("PUT", "/v1/task/release", {"status": "done", "leases": [lease]})
    assert [t["status"] for t in body["list"]] == ["done"]


@pytest.mark.django_db(transaction=True)
def test_a_deadlock_is_transient_and_answers_503():
    make_namespace("ns")
    make_tasks("ns", 2)
    barrier = threading.Barrier(2)
    errors: list[Exception] = []

    def lock_both(first: str, second: str) -> None:
        try:
            with transaction.atomic(), connections["default"].cursor() as cursor:
                cursor.execute("SELECT 1 FROM tasks_app_task WHERE id = %s FOR UPDATE", [first])
                barrier.wait()
                cursor.execute("SELECT 1 FROM tasks_app_task WHERE id = %s FOR UPDATE", [second])
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=lock_both, args=("t000000", "t000001")),
        threading.Thread(target=lock_both, args=("t000001", "t000000")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (error,) = errors  # PostgreSQL broke the deadlock by failing exactly one
    assert transient(error) == CONFLICT
    response = exception_handler(error, {})
    assert response is not None
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.data["code"] == "database_conflict"


@pytest.mark.django_db
def test_a_programming_error_is_not_transient():
    from django.db import ProgrammingError, connection

    with pytest.raises(ProgrammingError) as raised, connection.cursor() as cursor:
        cursor.execute("SELECT no_such_column FROM tasks_app_task")
    assert transient(raised.value) is None


class Recording(httpx.HTTPTransport):
    """httpx's transport, keeping the status of every answer."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []
        self.unavailable = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        if response.status_code == 503:
            self.unavailable.set()
        return response


def test_the_python_client_rides_out_a_postgresql_restart(stack):
    recording = Recording()
    # Short waits, so the test does not sit out the server's Retry-After of 5 s.
    client = Client(
        f"http://127.0.0.1:{stack.port}",
        stack.token,
        transport=recording,
        max_retries=50,
        backoff=0.2,
        max_backoff=0.5,
    )
    with client:
        client.create_namespace("restart")
        client.register_task("restart", "job")
        stack.cluster.stop("fast")
        answers: list[object] = []
        calls = threading.Thread(target=lambda: answers.append(client.capture("restart")))
        try:
            calls.start()
            assert recording.unavailable.wait(20), recording.statuses
        finally:
            stack.cluster.start()
        calls.join(60)
        assert not calls.is_alive()
        (leases,) = answers
        assert [(lease.id, lease.attempt) for lease in leases] == [("job", 1)]  # type: ignore[attr-defined]
        assert recording.statuses[-1] == 200
        assert 503 in recording.statuses
        task = client.get_task("job")
        assert task is not None and (task.status, task.attempt) == ("in_progress", 1)
