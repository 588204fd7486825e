"""What the benchmarks share: set-up, a throwaway database, load processes, figures and tables.

Each benchmark keeps only what it measures; everything that surrounds the
measurement (Django, the database of its own, the server under load, the
threads that watch the server, the description of the machine and the
tables of results) lives here, once.

Import nothing from Django at module level here: `setup_django()` must run
first, and it sets the environment that the settings read. Processes that
the benchmarks spawn import this module too.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import psycopg

# The settings give every session `statement_timeout=30s`; a benchmark's bulk
# load or VACUUM of millions of rows may take longer than that.
STATEMENT_TIMEOUT_ENV = "TASKQ_DB_STATEMENT_TIMEOUT_MS"

# The environment as it was before `setup_django()` changed it, for
# subprocesses that must run the product exactly as an operator would.
_ORIGINAL_ENVIRON = dict(os.environ)


# --- Set-up ---------------------------------------------------------------------------


def setup_django(*, keep_statement_timeout: bool = False) -> None:
    """Configure Django for this process, by default without the settings' statement limit.

    The limit is lifted through the environment, so the processes this one
    spawns inherit the choice. A benchmark that measures a product path under
    the limit it has in production passes `keep_statement_timeout=True` (in
    every process of its own) and lifts the limit only around its loads, with
    `no_statement_timeout()`.
    """
    if not keep_statement_timeout:
        os.environ[STATEMENT_TIMEOUT_ENV] = "0"
    # django-axes logs its start and every login at INFO: noise between the figures.
    logging.getLogger("axes").setLevel(logging.WARNING)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskq_project.settings")
    import django

    django.setup()


def line_buffered_stdout() -> None:
    """Progress lines and the product's log (stderr) in the order they happen, even in a file."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)


def argument_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The benchmark's options parser, named as it is run, described by its docstring's summary."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])


def add_database_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """`--db-name` and `--keep`, for the benchmarks whose database is worth looking at after."""
    parser.add_argument("--db-name", default=default, help="the benchmark's own database")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")


# --- The benchmark's own database ---------------------------------------------------


def use_database(name: str) -> None:
    """Point Django's default connection at database `name`; the next query reconnects.

    The switch Django's test runner makes for its test database: both the
    settings and the connection's own copy of them name the new database.
    """
    from django.conf import settings
    from django.db import connection

    connection.close()
    settings.DATABASES["default"]["NAME"] = name
    connection.settings_dict["NAME"] = name


def _drop_and_create(name: str, *, create: bool) -> None:
    from django.db import connection

    quoted = connection.ops.quote_name(name)
    # A session on the maintenance database, whichever database the default
    # connection names: a database cannot be dropped from a session in it.
    # FORCE ends sessions that a crashed earlier run left behind.
    with connection._nodb_cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        if create:
            cursor.execute(f"CREATE DATABASE {quoted}")


@contextmanager
def bench_database(name: str, *, keep: bool = False) -> Iterator[None]:
    """A fresh, migrated database `name` on the configured server, for the `with` block.

    Dropped and created anew on entry, so no rows, bloat or statistics from an
    earlier run remain, and dropped again on exit unless `keep`. The
    configured database is never read or written.
    """
    from django.conf import settings
    from django.core.management import call_command

    home = str(settings.DATABASES["default"]["NAME"])
    if name == home:
        raise SystemExit(f"refusing to benchmark in the configured database {home!r}")
    _drop_and_create(name, create=True)
    use_database(name)
    try:
        # Under the limit kept for a product path, a migration must not be
        # what fails.
        with no_statement_timeout():
            call_command("migrate", verbosity=0)
        yield
    finally:
        use_database(home)
        if not keep:
            _drop_and_create(name, create=False)


@contextmanager
def checkout_database(name: str, checkout: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh database `name` on the configured server with the schema of another
    checkout (e.g. a `git worktree` of an earlier commit), for the `with` block; yields
    its DATABASE_URL.

    The checkout's own `manage.py migrate` builds it, so the earlier code's
    statements run on the schema they were written for, beside today's on
    the benchmark's own database. Dropped on exit unless `keep`.
    """
    from django.conf import settings
    from django.db import connection

    from taskq_project.database_url import database_url as url_of

    if name in (settings.DATABASES["default"]["NAME"], connection.settings_dict["NAME"]):
        raise SystemExit(f"refusing to use {name!r}: it is the configured or benchmark database")
    _drop_and_create(name, create=True)
    url = url_of(connection.settings_dict, name=name)
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
            cwd=checkout,
            env={**_ORIGINAL_ENVIRON, "DATABASE_URL": url, STATEMENT_TIMEOUT_ENV: "0"},
            check=True,
        )
        yield url
    finally:
        if not keep:
            _drop_and_create(name, create=False)


def database_url() -> str:
    """A DATABASE_URL for the database Django's default connection uses now."""
    from django.db import connection

    from taskq_project.database_url import database_url as url_of

    return url_of(connection.settings_dict)


@contextmanager
def no_statement_timeout() -> Iterator[None]:
    """Lift the statement limit for this session while the block loads or vacuums.

    For a benchmark that keeps the product's limit (`setup_django(
    keep_statement_timeout=True)`): a million-row INSERT or VACUUM can take
    longer than it, while what is measured keeps it, as in production. RESET
    goes back to the value the connection started with.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 0")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET statement_timeout")


def connect(url: str, **options: Any) -> psycopg.Connection[Any]:
    """A psycopg connection outside Django, in autocommit and with no statement limit.

    For load processes that run the product's statements straight in SQL,
    the floor that the product's own path is compared with: no ORM, no
    transaction around each statement.
    """
    import psycopg

    conn = psycopg.connect(url, autocommit=True, **options)
    conn.execute("SET statement_timeout = 0")
    return conn


def jsonb_as_text(conn: psycopg.Connection[Any]) -> None:
    """Read jsonb columns as text on `conn`, as Django's connections do.

    The product decodes a payload itself (orjson, in `capture_tasks`), so a
    statement's payload then costs the server and the wire, not psycopg's
    decoding with the json module.
    """
    from psycopg.types.string import TextLoader

    conn.adapters.register_loader("jsonb", TextLoader)


def checkpoint() -> None:
    """Flush dirty pages now, so that the next measurement does not pay for the last one's."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")


def settle() -> None:
    """Leave the tables as a live, autovacuumed database would be before a measurement.

    VACUUM sets the visibility map (index-only scans need it) and hint bits,
    and removes what a rolled-back EXPLAIN ANALYZE left, so the measurement
    does not pay for the load's housekeeping; ANALYZE gives the planner the
    statistics its estimates come from; the CHECKPOINT flushes the load's
    dirty pages, so a checkpoint that the load's WAL made due does not land
    in the measurement.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    checkpoint()


# A namespace's idle tasks in FIFO order, registered over the day before:
# a released task (available again at now()) goes to the back of the
# queue, so a loop that captures and releases them cycles through them all
# at a steady state. Straight into the table, one statement: a million rows
# through the ORM or `register_tasks` would take longer than what is
# measured. Parameters: namespace_id, rows.
LOAD_IDLE_TASKS = """
INSERT INTO tasks_app_task
    (id, namespace_id, timeout, retries_left, status,
     created_at, updated_at, available_at, lease_expires_at)
SELECT 'idle-' || lpad(g::text, 8, '0'), %(namespace_id)s, 300, 3, 'idle', v.at, v.at, v.at, NULL
FROM generate_series(1, %(rows)s) AS g
CROSS JOIN LATERAL (
    SELECT statement_timestamp() - interval '1 day' + g * interval '1 microsecond' AS at
) AS v
"""

# Idle tasks of one namespace at one priority, ids `prefix`00000001...,
# whose turns come a microsecond apart from `after` seconds from now (negative:
# already come, so capturable in FIFO order; positive: delayed), each with a
# JSON payload of exactly `payload_bytes` bytes of text (0: no payload).
# Parameters: namespace_id, prefix, rows, priority, after, payload_bytes
# (at least 12, the object's own characters, when not 0); `queued_tasks()`
# gives them with defaults.
LOAD_QUEUED_TASKS = """
INSERT INTO tasks_app_task
    (id, namespace_id, timeout, retries_left, status, priority, payload,
     created_at, updated_at, available_at, lease_expires_at)
SELECT %(prefix)s || lpad(g::text, 8, '0'), %(namespace_id)s, 300, 3, 'idle', %(priority)s,
       CASE WHEN %(payload_bytes)s > 0 THEN
           ('{"body": "' || rpad(md5(g::text), %(payload_bytes)s - 12, md5(g::text)) || '"}')::jsonb
       END,
       least(v.at, statement_timestamp()), least(v.at, statement_timestamp()), v.at, NULL
FROM generate_series(1, %(rows)s) AS g
CROSS JOIN LATERAL (
    SELECT statement_timestamp() + make_interval(secs => %(after)s)
           + g * interval '1 microsecond' AS at
) AS v
"""


def queued_tasks(
    namespace_id: str,
    rows: int,
    *,
    prefix: str = "idle-",
    priority: int = 0,
    after: float = -86_400.0,
    payload_bytes: int = 0,
) -> dict[str, Any]:
    """LOAD_QUEUED_TASKS's parameters; by default the tasks LOAD_IDLE_TASKS loads."""
    if 0 < payload_bytes < 12:
        raise ValueError("a payload is at least 12 bytes of JSON")
    return {
        "namespace_id": namespace_id,
        "prefix": prefix,
        "rows": rows,
        "priority": priority,
        "after": after,
        "payload_bytes": payload_bytes,
    }


# History: done tasks that no capture can see, only make the table (and its
# indexes) larger, as in a table that keeps what it did. Parameters as above.
LOAD_DONE_TASKS = """
INSERT INTO tasks_app_task
    (id, namespace_id, timeout, retries_left, status,
     created_at, updated_at, available_at, lease_expires_at)
SELECT 'done-' || lpad(g::text, 8, '0'), %(namespace_id)s, 300, 0, 'done',
       statement_timestamp() - interval '2 days', statement_timestamp() - interval '2 days',
       NULL, NULL
FROM generate_series(1, %(rows)s) AS g
"""


# --- Load processes and what watches them ----------------------------------------------


def product_environ(**overrides: str) -> dict[str, str]:
    """The environment to run the product in, as an operator would, on the database in use now.

    The one this process started with: in particular the settings' statement
    limit, which `setup_django()` lifted for this process only.
    """
    return {**_ORIGINAL_ENVIRON, "DATABASE_URL": database_url(), **overrides}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """gunicorn as `make run` starts it, on the database in use now, until `stop()`."""

    def __init__(self) -> None:
        from django.conf import settings

        self.port = free_port()
        env = product_environ(TASKQ_THROTTLE_WORKER="none", GUNICORN_ACCESS_LOG="/dev/null")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "taskq_project/gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{self.port}",
            ],
            cwd=settings.BASE_DIR,
            env=env,
            # A process group of its own: stop() ends the master and its workers together.
            start_new_session=True,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2)
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("gunicorn did not come up")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


class Sampler:
    """Calls `sample()` every `interval` seconds in a thread of its own, while the `with` lasts.

    The thread has its own database connection (Django's are per thread),
    closed when it ends, and it keeps sampling while the main thread waits on
    a statement, which releases the GIL. `started()` runs in the thread
    before the first sample; entering the `with` waits for it, so the
    measurement never begins before the sampler watches.
    """

    name = "sampler"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._started = threading.Event()
        self._failed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def started(self) -> None:
        """In the sampling thread, before the first sample (e.g. connect, note the backend)."""

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._started.wait(timeout=60) or self._failed:
            self._stop.set()
            raise SystemExit(f"the {self.name} could not connect")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        from django.db import connection  # this thread's own

        try:
            try:
                self.started()
            except BaseException:
                self._failed = True
                raise
            finally:
                self._started.set()
            while not self._stop.is_set():
                self.sample()
                self._stop.wait(self.interval)
        finally:
            connection.close()


@dataclass(frozen=True)
class Executed:
    sql: str
    params: Any
    started: float  # time.perf_counter()
    ended: float

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000


@contextmanager
def recorded_statements() -> Iterator[list[Executed]]:
    """Every statement the default connection executes in the block, timed, with its parameters.

    An execute wrapper rather than CaptureQueriesContext: it times with
    perf_counter (CaptureQueriesContext rounds to the millisecond) and keeps
    the parameters, for an EXPLAIN ANALYZE of the same statement. The code
    measured runs unchanged. COPY through psycopg's `copy()` passes no
    wrapper: it is the gap between the statements around it.
    """
    from django.db import connection

    statements: list[Executed] = []

    def record(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append(Executed(sql, params, started, time.perf_counter()))

    with connection.execute_wrapper(record):
        yield statements


# --- The multi-server layout, and the CPU time of its processes ----------------------

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1 (free when looked at)."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise SystemExit(f"no {count} consecutive free ports")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class RedisServer:
    """A redis-server of the benchmark's own on a free port, until `stop()`.

    The machine's Redis (127.0.0.1:6379) may be another stack's broker and
    cache: a cluster of the benchmark's own must not take that stack's
    Celery tasks, nor share its cache's keys.
    """

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin")
        if binary is None:
            raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                binary,
                *("--bind", "127.0.0.1", "--port", str(self.port)),
                *("--save", "", "--appendonly", "no", "--dir", str(directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("redis-server did not come up")

    def url(self, database: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Cluster:
    """`make cluster` (scripts/cluster.py) with `servers` app servers, on the database
    in use now, until `stop()`.

    PgBouncer in transaction mode in front of the configured PostgreSQL
    server, the app servers on ports `port` + 1..., HAProxy on `port`, the
    Celery worker and beat on `redis`; every process under the cluster's
    supervisor, in a directory of its own (TASKQ_CLUSTER_DIR), so that
    another cluster running from this checkout is neither seen nor stopped.
    `env` overrides the product's environment (e.g. throttling off for the
    benchmark's tokens). Ready when every app server and HAProxy answer
    /healthz and HAProxy has had time to see them up.
    """

    START_SECONDS = 180.0

    def __init__(self, servers: int, *, redis: RedisServer, **env: str) -> None:
        self.servers = servers
        self.directory = Path(tempfile.mkdtemp(prefix="taskq-bench-cluster-"))
        # PgBouncer runs as another user (it refuses root) and reads its
        # configuration under this directory.
        self.directory.chmod(0o755)
        self.port = free_port_block(servers + 1)
        self.env = product_environ(
            TASKQ_CLUSTER_DIR=str(self.directory),
            PORT=str(self.port),
            TASKQ_CLUSTER_SERVERS=str(servers),
            CELERY_BROKER_URL=redis.url(0),
            TASKQ_CACHE_URL=redis.url(1),
            **env,
        )
        self.log_path = self.directory / "cluster.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "scripts/cluster.py", "run", "--watch-parent"],
                cwd=BASE_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        urls = [f"http://127.0.0.1:{self.port + n}/healthz" for n in range(self.servers + 1)]
        deadline = time.monotonic() + self.START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the cluster exited ({self.process.returncode}):\n{self.tail()}")
            if all(_answers(url) for url in urls):
                # HAProxy counts a server up after two good checks, half a
                # second apart.
                time.sleep(1.5)
                return
            time.sleep(0.5)
        raise SystemExit(f"the cluster did not come up in {self.START_SECONDS:g} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def state(self) -> dict[str, Any]:
        """The supervisor's record of the stack (run/stack.json): its pid and each process's."""
        try:
            state: dict[str, Any] = json.loads((self.directory / "run" / "stack.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return state

    def stop(self) -> None:
        if self.process.poll() is None:
            subprocess.run(
                [sys.executable, "scripts/cluster.py", "stop"],
                cwd=BASE_DIR,
                env=self.env,
                stdout=subprocess.DEVNULL,
                check=False,
            )
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it: its parent, when it started (clock ticks since
    boot; with the pid, names the process for good), the CPU time it has used
    (user and system, clock ticks, all its threads) and its command line (a
    PostgreSQL backend's title names its database)."""

    pid: int
    ppid: int
    started: int
    ticks: int
    title: str


def processes() -> dict[int, Proc]:
    """Every process this user may read in /proc (another user's stat is readable;
    what is not is left out)."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        found[pid] = Proc(
            pid=pid,
            ppid=int(fields[1]),
            started=int(fields[19]),
            ticks=int(fields[11]) + int(fields[12]),
            title=title,
        )
    return found


def by_ancestry(procs: Mapping[int, Proc], roots: Mapping[int, str]) -> dict[int, str]:
    """The group of each process that is, or descends from, one of `roots` (pid ->
    group): the nearest root up its line of parents decides."""
    groups: dict[int, str] = {}
    for pid in procs:
        line = []
        current: int | None = pid
        group = None
        while current is not None and current > 1:
            if current in groups:
                group = groups[current]
                break
            if current in roots:
                group = roots[current]
                break
            line.append(current)
            parent = procs.get(current)
            current = parent.ppid if parent is not None else None
        if group is not None:
            groups[pid] = group
            for member in line:
                groups[member] = group
    return {pid: group for pid, group in groups.items() if pid in procs}


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU since boot (/proc/stat): busy is all but
    idle and iowait."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user time.
    total = sum(values[:8])
    return total - idle, total


@dataclass
class CpuUsage:
    """CPU seconds per group of processes over a window of `seconds`, and the whole
    machine's busy CPU seconds in it (every process, the kernel's too)."""

    seconds: float
    groups: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0
    marks: tuple[Any, Any] = (None, None)

    def cores(self, group: str) -> float:
        """The group's CPU as cores kept busy (CPU seconds per second)."""
        return self.groups.get(group, 0.0) / self.seconds

    @property
    def measured(self) -> float:
        return sum(self.groups.values())


class CpuWatch:
    """The CPU time of groups of processes over a window, from /proc/<pid>/stat.

    `classify` maps the processes seen to their group (those it leaves out are
    not counted). `measure(start, end)` watches the window in a thread of its
    own and `result()` waits for it: /proc is read at `start`, every
    `interval` seconds and at `end` (time.time()'s clock; None: when
    `finish()` is called), so a process that ends inside the window counts up
    to its last reading, and one that starts inside it counts from zero.
    `mark`, when given, is called at the window's start and end (e.g. for the
    WAL position) and its values kept in `marks`.
    """

    def __init__(
        self,
        classify: Callable[[Mapping[int, Proc]], Mapping[int, str]],
        *,
        interval: float = 0.5,
        mark: Callable[[], Any] | None = None,
    ) -> None:
        self.classify = classify
        self.interval = interval
        self.mark = mark
        self._thread: threading.Thread | None = None
        self._usage: CpuUsage | None = None
        self._error: BaseException | None = None
        self._finish = threading.Event()
        self._started = threading.Event()

    def _reading(self) -> dict[tuple[int, int], tuple[str, int]]:
        procs = processes()
        return {
            (pid, procs[pid].started): (group, procs[pid].ticks)
            for pid, group in self.classify(procs).items()
        }

    def _watch(self, start: float, end: float | None) -> None:
        try:
            time.sleep(max(0.0, start - time.time()))
            first_mark = self.mark() if self.mark else None
            began = time.time()
            busy_before, _ = machine_ticks()
            base = self._reading()
            last = dict(base)
            self._started.set()
            while not self._finish.is_set():
                left = self.interval if end is None else end - time.time()
                if left <= 0:
                    break
                self._finish.wait(min(self.interval, left))
                last.update(self._reading())
            busy_after, _ = machine_ticks()
            ended = time.time()
            last_mark = self.mark() if self.mark else None
            usage = CpuUsage(seconds=ended - began, marks=(first_mark, last_mark))
            usage.machine_busy = (busy_after - busy_before) / CLOCK_TICKS
            for key, (group, ticks) in last.items():
                used = ticks - (base[key][1] if key in base else 0)
                usage.groups[group] = usage.groups.get(group, 0.0) + used / CLOCK_TICKS
            self._usage = usage
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()

    def measure(self, start: float, end: float | None = None) -> None:
        """Watch from `start` to `end`; `start` in the past (or now) waits until the
        first reading is taken, so what follows the call is inside the window."""
        self._usage = self._error = None
        self._finish.clear()
        self._started.clear()
        self._thread = threading.Thread(
            target=self._watch, args=(start, end), name="cpu-watch", daemon=True
        )
        self._thread.start()
        if start <= time.time():
            self._started.wait()

    def finish(self) -> CpuUsage:
        """End a window opened without an end, now, and give its result."""
        self._finish.set()
        return self.result()

    def result(self) -> CpuUsage:
        assert self._thread is not None, "measure() first"
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._usage is not None
        return self._usage


# --- Describing the run ---------------------------------------------------------------


def machine_description() -> list[tuple[str, str]]:
    """The facts a reader needs to compare two runs: CPUs, server, code, load."""
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version(), current_setting('shared_buffers')")
        version, shared_buffers = cursor.fetchone()  # type: ignore[misc]
    source = "DATABASE_URL" if "DATABASE_URL" in _ORIGINAL_ENVIRON else "embedded (var/pgdata)"
    host = settings.DATABASES["default"]["HOST"] or "localhost"
    return [
        ("CPUs (nproc)", str(len(os.sched_getaffinity(0)))),
        ("PostgreSQL", str(version)),
        ("server", f"{source}, host {host}, shared_buffers {shared_buffers}"),
        ("code", code_version()),
        ("load average at start", load_average()),
    ]


def load_average() -> str:
    """The machine's 1, 5 and 15-minute load averages: how busy it was around the figures."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def code_version() -> str:
    """The commit the measured code comes from, and whether the tree differs from it."""
    from django.conf import settings

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(settings.BASE_DIR), *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.rstrip("\n")  # not strip(): porcelain lines start with a space

    try:
        commit = git("rev-parse", "--short", "HEAD")
        status = git("status", "--porcelain").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    # The benchmarks and their results are not the code under test.
    changed = [line[3:] for line in status if not line[3:].startswith(("bench/", "docs/"))]
    if not changed:
        return f"{commit} (clean)"
    return f"{commit} + uncommitted changes: {', '.join(changed)}"


# --- Figures and tables ----------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation): a value that was actually measured."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class LatencyPercentiles:
    """The p50 and p99 every latency table shows, in milliseconds, of `latencies` (seconds).

    A mixin for a benchmark's dataclass of one run or window, which holds
    the `latencies` field.
    """

    latencies: Sequence[float]

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None
) -> None:
    """A Markdown table (pasted as is into docs/benchmarks.md); numbers align right."""

    def numeric(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    def blank(value: object) -> bool:
        return value in ("", "-")

    if title:
        print(f"\n{title}\n")
    else:
        print()
    print("| " + " | ".join(headers) + " |")
    # A column of numbers (and blanks) aligns right.
    align = [
        "---:"
        if any(numeric(row[i]) for row in rows)
        and all(numeric(row[i]) or blank(row[i]) for row in rows)
        else "---"
        for i in range(len(headers))
    ]
    print("|" + "|".join(align) + "|")
    for row in rows:
        print("| " + " | ".join(_cell(value) for value in row) + " |")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"
