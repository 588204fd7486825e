"""The worker runner against the real server (gunicorn, PostgreSQL).

Heartbeats that outlast the lease's timeout, failures stored, a graceful
SIGTERM, and a `kill -9` that loses nothing. Workers run in threads of the
test or, to be signalled and killed, in processes (worker_script.py).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from taskq_client import Client, Lease, Worker

from apikeys_app.services import create_token
from tasks_app.models import Task
from tests.test_web_server import serve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SCRIPT = Path(__file__).with_name("worker_script.py")
BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from serve(tmp_path_factory.mktemp("worker-live"), WEB_CONCURRENCY="2")


@pytest.fixture
def url(server: int) -> str:
    return f"http://127.0.0.1:{server}"


@pytest.fixture
def token(db: None) -> str:
    _, secret = create_token(name="live-worker")
    return secret


@pytest.fixture
def client(url: str, token: str) -> Iterator[Client]:
    with Client(url, token) as opened:
        opened.create_namespace("ns")
        yield opened


def run_until(worker: Worker, done: Callable[[], bool], timeout: float = 20) -> None:
    """Run `worker` in a thread until `done()`, then stop it."""
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert thread.is_alive(), "the worker ended on its own"
            assert time.monotonic() < deadline, "not done in time"
            time.sleep(0.02)
    finally:
        worker.stop()
        thread.join(timeout)
    assert not thread.is_alive()


def test_heartbeats_keep_a_lease_three_times_its_timeout(client: Client, url: str, token: str):
    client.register_task("ns", "long", timeout=1)
    seen_by_other: list[list[Lease]] = []

    def handler(lease: Lease) -> str:
        with Client(url, token) as other:
            for _ in range(3):
                # The work: a second at a time, three times the lease's timeout.
                time.sleep(1)
                seen_by_other.append(other.capture("ns", limit=10))
        return "kept"

    worker = Worker(client, "ns", handler, wait=1, install_signal_handlers=False)
    run_until(worker, lambda: worker.stats.done == 1)
    assert seen_by_other == [[], [], []]
    task = Task.objects.get(pk="long")
    assert (task.status, task.attempt, task.result) == ("done", 1, "kept")
    assert worker.stats.lost == 0


def test_a_failing_handlers_error_is_stored(client: Client):
    client.register_task("ns", "bad", retries_left=0)

    def handler(lease: Lease) -> None:
        raise ValueError("disk full")

    worker = Worker(client, "ns", handler, wait=1, install_signal_handlers=False)
    run_until(worker, lambda: worker.stats.failed == 1)
    task = Task.objects.get(pk="bad")
    assert (task.status, task.last_error, task.retries_left) == ("failed", "disk full", 0)
    attempts = client.attempts("bad")
    assert attempts is not None
    assert [(a.outcome, a.error) for a in attempts] == [("failed", "disk full")]


def test_a_retry_holds_the_task_back_as_asked(client: Client):
    client.register_task("ns", "later")

    def handler(lease: Lease) -> None:
        from taskq_client import Retry

        raise Retry("not yet", after=30)

    worker = Worker(client, "ns", handler, wait=1, install_signal_handlers=False)
    run_until(worker, lambda: worker.stats.failed == 1)
    task = Task.objects.get(pk="later")
    assert task.status == "failed"
    assert task.last_error == "not yet"
    assert task.available_at is not None
    assert (task.available_at - task.updated_at).total_seconds() == pytest.approx(30, abs=1)
    assert client.capture("ns") == []


class Process:
    """worker_script.py in a process of its own, its output followed line by line."""

    def __init__(self, url: str, token: str, grace: float, directory: Path) -> None:
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, str(SCRIPT), url, token, "ns", str(grace), str(directory)],
            cwd=BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(self.popen.stdout,))
        self._reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, *lines: str, timeout: float = 20) -> None:
        with self._changed:
            found = self._changed.wait_for(
                lambda: all(line in self.lines for line in lines) or self.popen.poll() is not None,
                timeout,
            )
        assert found and all(line in self.lines for line in lines), self.lines

    def finish(self, timeout: float = 20) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(timeout)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.finish()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


def register(client: Client, *ids: str, **fields: Any) -> None:
    for priority, task_id in enumerate(ids):
        client.register_task("ns", task_id, priority=priority, **fields)


def test_sigterm_lets_running_handlers_finish_and_hands_the_rest_back(
    client: Client, url: str, token: str, tmp_path: Path, processes: list[Process]
):
    register(client, "quick", "stuck", "unstarted")
    worker = Process(url, token, grace=2, directory=tmp_path)
    processes.append(worker)
    worker.wait_for("started quick", "started stuck")
    worker.popen.send_signal(signal.SIGTERM)
    worker.wait_for("event stopping -")
    # Only now may `quick` finish: its slot frees while the worker stops.
    (tmp_path / "release-quick").touch()
    assert worker.finish() == 0, worker.lines
    assert "event done quick" in worker.lines
    assert "event handed_back stuck" in worker.lines
    quick, stuck, unstarted = (Task.objects.get(pk=i) for i in ("quick", "stuck", "unstarted"))
    assert (quick.status, quick.result) == ("done", "finished")
    assert (stuck.status, stuck.attempt, stuck.retries_left) == ("idle", 1, 3)
    assert (unstarted.status, unstarted.attempt) == ("idle", 0)
    attempts = client.attempts("stuck")
    assert attempts is not None
    assert [a.outcome for a in attempts] == ["handed_back"]


def test_a_worker_killed_mid_batch_loses_no_task(
    client: Client, url: str, token: str, tmp_path: Path, processes: list[Process]
):
    register(client, "a", "b", "c", timeout=1)
    first = Process(url, token, grace=30, directory=tmp_path)
    processes.append(first)
    first.wait_for("started a", "started b")
    os.kill(first.popen.pid, signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    finished: list[tuple[str, int]] = []

    def handler(lease: Lease) -> str:
        finished.append((lease.id, lease.attempt))
        return f"second:{lease.id}"

    # The long poll hands it the killed worker's tasks as their leases expire.
    second = Worker(client, "ns", handler, concurrency=3, wait=2, install_signal_handlers=False)
    run_until(second, lambda: second.stats.done == 3)
    assert sorted(finished) == [("a", 2), ("b", 2), ("c", 1)]
    rows = {t.id: t for t in Task.objects.all()}
    assert {i: (t.status, t.attempt, t.retries_left, t.result) for i, t in rows.items()} == {
        "a": ("done", 2, 2, "second:a"),
        "b": ("done", 2, 2, "second:b"),
        "c": ("done", 1, 3, "second:c"),
    }
