"""`make run` stops its whole stack whatever ends it; `make stop` stops it from outside.

Each test starts the real stack (scripts/supervisor.py running the Procfile:
gunicorn, the Celery worker, beat) on a free port, a database and a run
directory of its own, waits until it serves, ends it one way, and requires
that within STOP_SECONDS no process of it is left, by the pids it recorded
and by a scan of /proc, and that the port is free.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from psycopg import sql

from taskq_project.database_url import database_url

BASE_DIR = Path(settings.BASE_DIR)
STOP_SECONDS = 10
# Generous: three Django processes start at once on a possibly loaded 2-core machine.
START_SECONDS = 90
# The real `make run`. `-o migrate`: the fixture migrated the database once;
# every test migrating it again would cost seconds and test nothing here.
# `-o static` likewise (collectstatic, a Django start of its own).
MAKE_RUN = "make --no-print-directory -o migrate -o static run"
# What `make run` execs, for the tests where make plays no part.
SUPERVISOR_RUN = [sys.executable, "scripts/supervisor.py", "run", "--watch-parent"]
# Every process the test starts inherits this, with the test's own value: the
# scan of /proc finds exactly this test's processes, never anyone else's.
MARKER = "TASKQ_TEST_MAKE_RUN"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(START_SECONDS + 60)]


@pytest.fixture(scope="module")
def stack_database() -> Iterator[str]:
    """A migrated database of its own, on the server this test session uses."""
    server = settings.DATABASES["default"]
    name = f"taskq_make_run_{uuid.uuid4().hex[:8]}"
    admin_url = database_url(server, name="postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(server, name=name)
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=BASE_DIR,
            env={**os.environ, "DATABASE_URL": url, "TASKQ_DB_STATEMENT_TIMEOUT_MS": "0"},
            check=True,
            capture_output=True,
            timeout=180,
        )
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As gunicorn binds: a connection in TIME_WAIT does not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone, or another user's
        return b""


def start_time(pid: int) -> int | None:
    """When the process started (None: no such process, or only its zombie)."""
    stat = _proc(pid, "stat")
    if not stat:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def is_running(pid: int) -> bool:
    return start_time(pid) is not None


def cmdline(pid: int) -> str:
    return _proc(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def poll_until(condition: Callable[[], Any], deadline: float, interval: float = 0.1) -> Any:
    while True:
        result = condition()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def as_from_a_terminal() -> None:
    """Ctrl-C and Ctrl-\\ at their defaults, as a terminal's shell starts a command.

    A suite run in the background (`make test &` from a script) has them
    ignored, and the stack rightly keeps an inherited SIG_IGN (nohup).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class Stack:
    """One `make run` (or what it execs) with a port, a database and a run dir of its own."""

    def __init__(self, tmp_path: Path, database: str, command: list[str]) -> None:
        self.port = free_port()
        self.marker = uuid.uuid4().hex
        self.run_dir = tmp_path / "run"
        self.log_path = tmp_path / "stack.log"
        # Not the environment of a `make test` that may run this file: a new
        # user's `make run` is no sub-make.
        inherited = {
            key: value
            for key, value in os.environ.items()
            if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
        }
        self.env = {
            **inherited,
            "DATABASE_URL": database,
            "PORT": str(self.port),
            "TASKQ_RUN_DIR": str(self.run_dir),
            # A queue of its own, so that a `make run` on the same broker never
            # takes this stack's sweeps, nor this worker its.
            "TASKQ_CELERY_QUEUE": f"taskq-make-run-{self.marker[:8]}",
            "WEB_CONCURRENCY": "1",
            "GUNICORN_THREADS": "2",
            MARKER: self.marker,
        }
        with self.log_path.open("wb") as log:
            # A session of its own: the process group a terminal would send
            # Ctrl-C to, and nothing of pytest's in it.
            self.process = subprocess.Popen(
                command,
                cwd=BASE_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=as_from_a_terminal,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads((self.run_dir / "stack.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return state

    def pid(self, name: str) -> int:
        pid: int = self.state()["processes"][name]["pid"]
        return pid

    def members(self) -> list[int]:
        """The live processes that inherited this stack's marker."""
        needle = f"{MARKER}={self.marker}".encode()
        return [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit()
            and needle in _proc(int(entry.name), "environ").split(b"\0")
            and is_running(int(entry.name))
        ]

    def _serving(self) -> bool:
        assert self.process.poll() is None, f"the stack exited early:\n{self.log()}"
        log = self.log()
        if " ready." not in log or "beat: Starting" not in log:
            return False
        if len(self.state().get("processes", {})) != 3:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        assert poll_until(self._serving, deadline, 0.2), f"not serving:\n{self.log()}"
        beats = [pid for pid in self.members() if " beat " in f" {cmdline(pid)} "]
        assert len(beats) == 1, [cmdline(pid) for pid in beats]

    def assert_stopped(self, since: float) -> None:
        """Nothing of the stack is left STOP_SECONDS after `since`, and the port is free."""
        state = self.state()
        recorded = [state["supervisor"], *state["processes"].values()]

        def stopped() -> bool:
            return (
                self.process.poll() is not None
                and not any(start_time(r["pid"]) == r["start_time"] for r in recorded)
                and not self.members()
                and port_is_free(self.port)
            )

        done = poll_until(stopped, since + STOP_SECONDS)
        left = {pid: cmdline(pid) for pid in self.members()}
        assert done, (
            f"after {STOP_SECONDS} s: left {left}, make/pipeline exit {self.process.poll()}, "
            f"port free {port_is_free(self.port)}\n{self.log()}"
        )

    def kill_everything(self) -> None:
        """Teardown: whatever a failed test left, gone (only this test's processes)."""
        for pid in self.members():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        poll_until(lambda: not self.members(), time.monotonic() + 10)
        # The filesystem broker keeps a binding per queue, and the sweep beat
        # sent as the stack stopped: this queue's are nobody's once it is gone.
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            queue = self.env["TASKQ_CELERY_QUEUE"]
            folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
            for path in [folder / f"{queue}.exchange", *folder.glob(f"*.{queue}.msg")]:
                path.unlink(missing_ok=True)


@pytest.fixture
def start_stack(tmp_path: Path, stack_database: str) -> Iterator[Callable[[list[str]], Stack]]:
    stacks: list[Stack] = []

    def start(command: list[str]) -> Stack:
        stack = Stack(tmp_path, stack_database, command)
        stacks.append(stack)
        stack.wait_until_serving()
        return stack

    yield start
    for stack in stacks:
        stack.kill_everything()


def assert_requested_stop(stack: Stack, reason: str) -> None:
    state = stack.state()
    assert (state["state"], state["exit_code"], state["reason"]) == ("stopped", 0, reason)
    assert "Error 130" not in stack.log()
    assert "make: ***" not in stack.log()


def test_ctrl_c_on_a_terminal_stops_the_whole_stack(start_stack):
    stack = start_stack(MAKE_RUN.split())
    since = time.monotonic()
    os.killpg(stack.process.pid, signal.SIGINT)  # the terminal signals the foreground group
    stack.assert_stopped(since)
    assert_requested_stop(stack, "SIGINT received")
    # make dies of the SIGINT it got, quietly, once the stack is down.
    assert stack.process.returncode == -signal.SIGINT


def test_ctrl_c_through_a_pipe_stops_the_whole_stack(start_stack):
    # `cat` dies of the same Ctrl-C, so the supervisor's output breaks as it stops.
    stack = start_stack(["bash", "-c", f"{MAKE_RUN} 2>&1 | cat"])
    since = time.monotonic()
    os.killpg(stack.process.pid, signal.SIGINT)
    stack.assert_stopped(since)
    assert_requested_stop(stack, "SIGINT received")


def test_a_reader_of_the_output_going_away_stops_the_whole_stack(start_stack):
    # `| tee log` with tee killed alone: the stack does not run on unseen.
    stack = start_stack(["bash", "-c", f"{MAKE_RUN} 2>&1 | cat"])
    (cat,) = [pid for pid in stack.members() if cmdline(pid) == "cat"]
    since = time.monotonic()
    os.kill(cat, signal.SIGKILL)
    stack.assert_stopped(since)
    state = stack.state()
    assert (state["exit_code"], state["reason"]) == (0, "its output was closed")


@pytest.mark.parametrize(
    ("signum", "reason"),
    [
        (signal.SIGTERM, "SIGTERM received"),
        # make does not pass SIGHUP on: it waits for the recipe, which watches it.
        (signal.SIGHUP, "make was signalled"),
    ],
    ids=["sigterm", "sighup"],
)
def test_a_signal_to_make_alone_stops_the_whole_stack(start_stack, signum, reason):
    stack = start_stack(MAKE_RUN.split())
    since = time.monotonic()
    os.kill(stack.process.pid, signum)
    stack.assert_stopped(since)
    assert_requested_stop(stack, reason)
    assert stack.process.returncode == -signum


def test_a_celery_worker_killed_with_9_stops_the_rest_and_its_beat(start_stack):
    stack = start_stack(SUPERVISOR_RUN)
    beat = stack.pid("beat")
    since = time.monotonic()
    os.kill(stack.pid("worker"), signal.SIGKILL)
    stack.assert_stopped(since)
    assert not is_running(beat)
    state = stack.state()
    assert (state["exit_code"], state["reason"]) == (1, "worker killed by SIGKILL")
    assert stack.process.returncode == 1


def test_a_gunicorn_master_killed_with_9_stops_the_rest(start_stack):
    stack = start_stack(MAKE_RUN.split())
    since = time.monotonic()
    os.kill(stack.pid("web"), signal.SIGKILL)
    stack.assert_stopped(since)  # its orphaned workers too
    state = stack.state()
    assert (state["exit_code"], state["reason"]) == (1, "web killed by SIGKILL")
    # A crash is an error of `make run`.
    assert "Error 1" in stack.log()
    assert stack.process.returncode == 2


def test_make_stop_stops_a_stack_running_in_the_background(start_stack):
    stack = start_stack(SUPERVISOR_RUN)
    # One stack per run directory: a second would run a second beat.
    second = subprocess.run(
        SUPERVISOR_RUN, cwd=BASE_DIR, env=stack.env, capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1
    assert "already running" in second.stderr

    since = time.monotonic()
    stop = subprocess.run(
        ["make", "--no-print-directory", "stop"],
        cwd=BASE_DIR,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    stack.assert_stopped(since)
    assert_requested_stop(stack, "SIGTERM received")
    assert stack.process.returncode == 0

    again = subprocess.run(
        ["make", "--no-print-directory", "stop"],
        cwd=BASE_DIR,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 0
    assert "not running" in again.stdout
