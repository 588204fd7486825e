"""The WSGI entry point under the real gunicorn, as `make run` and production serve it."""

import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apikeys_app.services import create_token
from tasks_app.models import Task
from tests.factories import make_namespace
from tests.utils import subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gunicorn(tmp_path):
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "taskq_project/gunicorn.conf.py"],
        cwd=BASE_DIR,
        env=subprocess_env(
            PORT=str(port),
            WEB_CONCURRENCY="1",
            GUNICORN_ACCESS_LOG="/dev/null",
            TASKQ_MAX_BODY_BYTES="4096",
        ),
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError as exc:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError((tmp_path / "gunicorn.log").read_text()) from exc
            time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(timeout=15)
    log.close()


def chunked_request(port: int, method: str, path: str, body: bytes, token: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    conn.request(
        method,
        path,
        body=iter(chunks),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        encode_chunked=True,
    )
    try:
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def test_a_chunked_body_is_read_like_any_other(gunicorn):
    make_namespace("ns")
    _, token = create_token(name="chunky")
    body = json.dumps({"id": "sent-in-chunks", "namespace_id": "ns", "timeout": 60}).encode()
    status, content_type, answer = chunked_request(gunicorn, "POST", "/v1/task", body, token)
    assert status == 201, answer
    assert content_type.startswith("application/json")
    assert json.loads(answer)["id"] == "sent-in-chunks"
    assert Task.objects.get(pk="sent-in-chunks").timeout == 60


def test_an_oversized_chunked_body_is_refused_with_413(gunicorn):
    make_namespace("ns")
    _, token = create_token(name="chunky")
    tasks = [{"id": f"t{i}", "namespace_id": "ns"} for i in range(200)]
    body = json.dumps(tasks).encode()
    assert len(body) > 4096
    status, content_type, answer = chunked_request(gunicorn, "POST", "/v1/task", body, token)
    assert status == 413, answer
    assert content_type.startswith("application/json")
    assert not Task.objects.exists()
