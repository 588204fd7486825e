"""The README's worker examples, run as written against the real server.

The README shows these files verbatim (checked below), so what it promises
a new user is what these tests run.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from apikeys_app.services import create_token
from tasks_app.models import Task
from tasks_app.services import NewTask, register_tasks
from tests.factories import make_namespace
from tests.test_web_server import serve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EXAMPLES = Path(__file__).with_name("examples")
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    # The production body limit (serve's own is a test's 4 KiB).
    yield from serve(tmp_path_factory.mktemp("readme-examples"), TASKQ_MAX_BODY_BYTES="2097152")


def wait_until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


def test_the_python_worker_of_the_readme_does_what_it_says(server: int):
    _, token = create_token(name="resizer", role="worker")
    make_namespace("images")
    register_tasks(
        tasks=[
            NewTask(id="ok", namespace_id="images", payload={"src": "s3://b/1.png", "w": 640}),
            # No retries: its failure is final, not captured again meanwhile.
            NewTask(
                id="bad", namespace_id="images", retries_left=0, payload={"src": "ftp://x", "w": 1}
            ),
            NewTask(id="busy", namespace_id="images", payload={"src": "busy://b/2", "w": 2}),
        ]
    )
    worker = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "resize_worker.py")],
        env={**os.environ, "TASKQ_URL": f"http://127.0.0.1:{server}", "TASKQ_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: Task.objects.filter(status__in=["done", "failed"]).count() == 3)
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=30)[0]
    assert worker.returncode == 0, output

    ok, bad, busy = (Task.objects.get(pk=i) for i in ("ok", "bad", "busy"))
    assert (ok.status, ok.result) == ("done", {"src": "s3://b/1.png", "width": 640})
    assert bad.status == "failed"
    assert "not on S3: ftp://x" in str(bad.last_error)
    # Retry(after=30): failed, and not capturable for exactly those 30 s.
    assert busy.status == "failed"
    assert busy.available_at is not None
    assert busy.available_at - busy.updated_at == timedelta(seconds=30)
    assert "storage busy" in str(busy.last_error)


def test_the_client_example_of_the_readme_registers_captures_and_releases(server: int):
    _, token = create_token(name="example")
    example = subprocess.run(
        [sys.executable, str(EXAMPLES / "client_example.py")],
        env={**os.environ, "TASKQ_URL": f"http://127.0.0.1:{server}", "TASKQ_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert example.returncode == 0, example.stderr
    done = Task.objects.filter(namespace_id="images", status="done")
    assert sorted(done.values_list("id", flat=True)) == [f"img-{n}" for n in range(10)]
    assert [task.result for task in done] == [{"ok": True}] * 10
    assert Task.objects.filter(namespace_id="images", status="idle").count() == 90


def test_the_readme_shows_the_examples_as_they_are_tested():
    readme = README.read_text()
    for example in sorted(EXAMPLES.iterdir()):
        if example.suffix in (".py", ".sh"):
            assert example.read_text().strip() in readme, f"README lacks {example.name} as is"
