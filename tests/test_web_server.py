"""The web server as `make run` and production serve it: gunicorn with uvicorn workers.

One worker process, so that a request held by a thread of its own would
show: the figures of the same situations are in bench/slow_clients.py.
"""

import concurrent.futures
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from apikeys_app.services import create_token
from tasks_app.models import Task
from tests.factories import make_namespace
from tests.utils import database_url_of_test_database, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent
BODY_LIMIT = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One server for the tests that leave it as they found it.

    Each test still starts from an empty database (transaction=True flushes
    it), and the server keeps nothing of a request but idle connections.
    `django_db_setup`: the server must be given the test database.
    """
    yield from serve(tmp_path_factory.mktemp("server"))


def serve(tmp_path, **env: str) -> Iterator[int]:
    port = free_port()
    log_path = tmp_path / "server.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "taskq_project/gunicorn.conf.py"],
        cwd=BASE_DIR,
        env=subprocess_env(
            **{
                "PORT": str(port),
                "WEB_CONCURRENCY": "1",
                "GUNICORN_ACCESS_LOG": "/dev/null",
                "TASKQ_MAX_BODY_BYTES": str(BODY_LIMIT),
                **env,
            }
        ),
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            break
        except OSError as exc:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(log_path.read_text()) from exc
            time.sleep(0.1)
        finally:
            # A server still starting may accept and then drop the probe.
            conn.close()
    yield port
    process.terminate()
    process.wait(timeout=15)
    log.close()


def request(port: int, method: str, path: str, body=None, headers=None, **kwargs):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {}, **kwargs)
    try:
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def read_until_closed(sock: socket.socket) -> tuple[bytes, bytes]:
    """A raw answer, read until the server closes: its head and its body."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def chunked_request(port: int, method: str, path: str, body: bytes, token: str):
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    return request(
        port,
        method,
        path,
        body=iter(chunks),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        encode_chunked=True,
    )


def test_a_chunked_body_is_read_like_any_other(server):
    make_namespace("ns")
    _, token = create_token(name="chunky")
    body = json.dumps({"id": "sent-in-chunks", "namespace_id": "ns", "timeout": 60}).encode()
    status, content_type, answer = chunked_request(server, "POST", "/v1/task", body, token)
    assert status == 201, answer
    assert content_type.startswith("application/json")
    assert json.loads(answer)["id"] == "sent-in-chunks"
    assert Task.objects.get(pk="sent-in-chunks").timeout == 60


def test_an_oversized_chunked_body_is_refused_with_413(server):
    make_namespace("ns")
    _, token = create_token(name="chunky")
    tasks = [{"id": f"t{i}", "namespace_id": "ns"} for i in range(200)]
    body = json.dumps(tasks).encode()
    assert len(body) > BODY_LIMIT
    status, content_type, answer = chunked_request(server, "POST", "/v1/task", body, token)
    assert status == 413, answer
    assert content_type.startswith("application/json")
    assert json.loads(answer)["code"] == "payload_too_large"
    assert not Task.objects.exists()


def test_a_body_declared_too_large_is_refused_before_it_is_sent(server):
    """The 413 comes at once: the server does not wait for a body it would refuse."""
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/task HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        head, body = read_until_closed(sock)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["code"] == "payload_too_large"


def test_a_body_just_within_the_limit_is_read(server):
    make_namespace("ns")
    _, token = create_token(name="big")
    body = json.dumps({"id": "fits", "namespace_id": "ns"}).encode()
    body += b" " * (BODY_LIMIT - len(body))
    assert len(body) == BODY_LIMIT
    status, _, answer = request(
        server,
        "POST",
        "/v1/task",
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert status == 201, answer


def test_an_overlong_request_target_is_refused_with_414_json(server):
    status, content_type, answer = request(server, "GET", "/v1/task?cursor=" + "a" * 8200)
    assert status == 414, answer
    assert content_type.startswith("application/json")
    assert json.loads(answer)["code"] == "uri_too_long"


def test_a_request_target_at_the_limit_is_served(server):
    path = "/v1/task?namespace_id="
    status, _, answer = request(server, "GET", path + "a" * (8190 - len(path)))
    # Read by the API, which asks for a token: not refused by the server.
    assert status == 401, answer


def test_an_id_ending_in_an_encoded_slash_is_refused(server):
    """The server passes the raw path on, so `x%2F` is not read as `x`."""
    make_namespace("ns")
    _, token = create_token(name="reader")
    status, _, answer = request(
        server, "GET", "/v1/namespace/ns%2F", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 400, answer
    assert "must not end with '/'" in json.loads(answer)["detail"]


@pytest.mark.parametrize("trickle", ["headers", "body"])
def test_slow_clients_do_not_hold_up_anyone_else(server, trickle):
    """64 clients trickling their requests in, twice the threads gunicorn's
    gthread worker had in all: with them, other requests are still answered."""
    stop = threading.Event()
    started = threading.Barrier(65)

    def slow_client() -> None:
        with socket.create_connection(("127.0.0.1", server), timeout=30) as sock:
            if trickle == "headers":
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
                chunk = b"X-Slow: 1\r\n"
            else:
                sock.sendall(
                    b"POST /v1/namespace HTTP/1.1\r\nHost: test\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
                )
                chunk = b" "
            started.wait()
            while not stop.wait(0.5):
                sock.sendall(chunk)

    clients = [threading.Thread(target=slow_client) for _ in range(64)]
    for client in clients:
        client.start()
    try:
        started.wait(timeout=30)
        time.sleep(1.0)  # every slow client has trickled in at least once
        make_namespace("ns")
        _, token = create_token(name="busy")
        for _ in range(5):
            status, _, answer = request(server, "GET", "/healthz")
            assert status == 200, answer
            status, _, answer = request(
                server, "GET", "/v1/namespace/ns", headers={"Authorization": f"Bearer {token}"}
            )
            assert status == 200, answer
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=10)


def test_an_endless_request_head_is_refused_with_431(server):
    """A head that never ends is cut off, not kept: the worker's memory stays bounded."""
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        # Just over the bound and no more: the server reads all of it before
        # it closes, so the close is not a reset that would drop the answer.
        start = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Endless: "
        sock.sendall(start + b"a" * (65_537 - len(start)))
        head, body = read_until_closed(sock)
    assert head.startswith(b"HTTP/1.1 431"), head
    assert json.loads(body)["code"] == "request_header_fields_too_large"


def test_a_large_head_within_the_bound_is_served(server):
    headers = {f"X-Filler-{i}": "v" * 1000 for i in range(60)}
    status, _, answer = request(server, "GET", "/healthz", headers=headers)
    assert status == 200, answer


@pytest.fixture
def one_thread_server(tmp_path) -> Iterator[int]:
    yield from serve(tmp_path, GUNICORN_THREADS="1", TASKQ_WEB_QUEUE_SECONDS="1")


def test_a_request_that_finds_no_free_thread_is_answered_503_and_never_runs(one_thread_server):
    """The one thread waits on a lock; a request queued behind it past the
    queue's deadline answers 503 with Retry-After, and never runs later."""
    make_namespace("ns")
    _, token = create_token(name="queued")
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with psycopg.connect(database_url_of_test_database()) as blocker:
        blocker.execute("LOCK TABLE tasks_app_task IN ACCESS EXCLUSIVE MODE")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(request, one_thread_server, "GET", "/v1/task/x", headers=auth)
            # The held request has the thread once it waits on the lock.
            deadline = time.monotonic() + 20
            while not waiting_on_the_lock(blocker):
                assert time.monotonic() < deadline, "the request never reached the lock"
                time.sleep(0.05)
            conn = http.client.HTTPConnection("127.0.0.1", one_thread_server, timeout=30)
            body = json.dumps({"id": "queued", "namespace_id": "ns"})
            conn.request("POST", "/v1/task", body=body, headers=auth)
            response = conn.getresponse()
            answer = json.loads(response.read())
            conn.close()
            assert response.status == 503, answer
            assert response.getheader("Retry-After") == "1"
            assert answer["code"] == "server_busy"
            # The health check has threads of its own: it still answers.
            status, _, health = request(one_thread_server, "GET", "/healthz")
            assert status == 200, health
            assert json.loads(health)["database"]["ok"] is True
            blocker.rollback()
            status, _, _ = held.result(timeout=30)
    assert status == 204
    # The thread is free again, and the queued registration never ran.
    status, _, _ = request(one_thread_server, "GET", "/v1/task/queued", headers=auth)
    assert status == 204
    assert not Task.objects.filter(pk="queued").exists()


def waiting_on_the_lock(blocker: psycopg.Connection) -> bool:
    row = blocker.execute(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'tasks_app_task'::regclass"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return row is not None and row[0] > 0


def test_workers_stop_when_their_master_is_killed(tmp_path):
    """uvicorn's workers would outlive a master killed with -9 and keep its port."""
    import os
    import signal

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "taskq_project/gunicorn.conf.py"],
        cwd=BASE_DIR,
        env=subprocess_env(
            PORT=str(port),
            WEB_CONCURRENCY="2",
            GUNICORN_TIMEOUT="4",
            GUNICORN_ACCESS_LOG="/dev/null",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        workers: list[int] = []
        while len(workers) < 2:
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
            workers = [int(pid) for pid in children.read_text().split()]
        process.kill()
        process.wait()
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "orphaned workers kept running"
            time.sleep(0.2)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
