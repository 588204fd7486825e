"""Jepsen-style fault injection against the real stack: is anything acknowledged lost?

    .venv/bin/python scripts/faults.py [--seconds N] [--workers K] [--seed S] [--workdir DIR]
    .venv/bin/python scripts/faults.py --cluster [--servers M] [the same options]

Starts a PostgreSQL cluster of its own (tests/pgcluster.py), migrates it,
and runs the stack as production does: gunicorn with its uvicorn workers, and
a Celery worker with beat sweeping expired leases every second (on the
filesystem broker, in a queue of the run's own). A registrar and K lease
workers (processes) then load it through the API for N seconds while a
nemesis kills web workers and the gunicorn master with SIGKILL (restarting
the server), kills the Celery worker (restarting it), stops PostgreSQL in
immediate mode and restarts it, and pauses it (SIGSTOP) for longer than the
clients' timeout. Every request is recorded.

At the end every fault is healed, the leases left are let expire and swept,
the queue is drained through the API, and the final table, read from
PostgreSQL itself, is judged against the history by tests/faults/checker.py.
Prints the figures; exits 1 on any violation. The history and the logs stay
in the work directory (printed).

With --cluster the same load and checker run against `make cluster`'s layout
(scripts/cluster.py, started with a directory and ports of the run's own, on
the run's own PostgreSQL): HAProxy in front of M app servers (3), PgBouncer
in transaction mode, the Celery worker and beat on Redis, all under
scripts/supervisor.py, which restarts whatever dies. The clients talk to
HAProxy. The nemesis kills one app server's gunicorn master (the supervisor
restarts it, HAProxy takes it out and back), PgBouncer, the Celery worker or
beat, all with SIGKILL, and stops and pauses PostgreSQL as above. Beside the
checker's counts the run reports the stale releases accepted and, per
app-server kill, the longest time no lease worker's request through HAProxy
was answered; it fails when that reaches UNAVAILABILITY_TARGET (1 s).
"""

import argparse
import bisect
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

BASE_DIR = Path(__file__).resolve().parent.parent
# Run as a script, this folder and not the project is on the path.
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

# As in the test settings (pyproject.toml): pgserver's platformdirs warns,
# once per process, when XDG_RUNTIME_DIR is unset (containers, CI).
warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")

import psycopg  # noqa: E402

from tests.faults import checker, client  # noqa: E402
from tests.pgcluster import Cluster, free_port, wait_for  # noqa: E402

NAMESPACE = "faults"
FAULT_KINDS = (
    "kill_web_worker",
    "kill_web_master",
    "kill_celery",
    "stop_postgres",
    "pause_postgres",
)
SWEEP_SECONDS = 1
# A lease still in progress this long after its expiry, at the end, is stuck:
# the sweeper runs every second, and a run can take a moment to be scheduled.
SWEEP_GRACE = 10.0
# The broker's folder is fixed by the settings (var/celery-broker); a queue
# of the run's own keeps other stacks on that folder out of its messages.
BROKER_DIR = BASE_DIR / "var" / "celery-broker"

# --cluster: what the nemesis does to scripts/cluster.py's layout.
CLUSTER_FAULT_KINDS = (
    "kill_app_server",
    "kill_pgbouncer",
    "kill_celery",
    "stop_postgres",
    "pause_postgres",
)
# HAProxy's checks (scripts/cluster.py: inter 500ms, rise 2) put a server
# back after two good ones: an app-server kill's window ends this long after
# the server answers again, with it back in the rotation.
HAPROXY_RISE_SECONDS = 1.5
# The longest an app-server kill may leave every lease worker without an
# answer through HAProxy.
UNAVAILABILITY_TARGET = 1.0
# Set by the environment for `make run` or `make cluster`, not for this
# run's cluster, which scripts/cluster.py sets up itself.
CLUSTER_VARIABLES = (
    "TASKQ_RUN_DIR",
    "TASKQ_PROCFILE",
    "TASKQ_STACK_ID",
    "TASKQ_SUPERVISOR_RESTART",
    "TASKQ_DB_POOLER",
    "TASKQ_LISTEN_DATABASE_URL",
    "TASKQ_CLUSTER_PGBOUNCER_PORT",
    "GUNICORN_BIND",
    "PROMETHEUS_MULTIPROC_DIR",
    "PORT",
)


def _stat(pid: int) -> list[str] | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    # A zombie has exited and closed its sockets; only its parent can reap it.
    return fields is not None and fields[0] not in ("Z", "X")


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] not in ("Z", "X"):
                yield int(entry.name), fields


def children(pid: int) -> list[int]:
    return [child for child, fields in _processes() if int(fields[1]) == pid]


def process_group(pgid: int) -> list[int]:
    return [member for member, fields in _processes() if int(fields[2]) == pgid]


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Stack:
    """PostgreSQL, gunicorn and the Celery worker with beat, each restartable."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cluster = Cluster()
        self.port = free_port()
        self.queue = f"taskq-faults-{uuid.uuid4().hex[:8]}"
        self.web: subprocess.Popen[bytes] | None = None
        self.celery: subprocess.Popen[bytes] | None = None
        self.operator_token = ""
        self.worker_token = ""
        env = {
            key: value
            for key, value in os.environ.items()
            # Unset, Celery uses the filesystem broker, which needs no server.
            if key not in ("CELERY_BROKER_URL", "DATABASE_URL", "TASKQ_CELERY_QUEUE")
        }
        self.env = {
            **env,
            "DATABASE_URL": self.cluster.url("taskq"),
            # A key of the run's own, rather than var/secret_key.
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "TASKQ_CELERY_QUEUE": self.queue,
            "TASKQ_SWEEP_SECONDS": str(SWEEP_SECONDS),
            "TASKQ_RUN_DIR": str(workdir),
            "PYTHONUNBUFFERED": "1",
        }

    def manage(self, *args: str, **env: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env={**self.env, **env},
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def start(self) -> None:
        self.prepare_database()
        self.start_web()
        self.start_celery()
        self.wait_healthy()

    def prepare_database(self) -> None:
        """PostgreSQL started, the database made and migrated, the run's two tokens."""
        self.cluster.start()
        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE taskq")
        self.manage("migrate", "--noinput", TASKQ_DB_STATEMENT_TIMEOUT_MS="0")
        self.operator_token = self.manage("create_api_token", "faults-operator").splitlines()[-1]
        self.worker_token = self.manage(
            "create_api_token", "faults-worker", "--role", "worker", "--namespace", NAMESPACE
        ).splitlines()[-1]

    def _log(self, name: str) -> Any:
        return (self.workdir / f"{name}.log").open("ab")

    def start_web(self) -> None:
        with self._log("web") as log:
            self.web = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "taskq_project/gunicorn.conf.py"],
                cwd=BASE_DIR,
                env={
                    **self.env,
                    "PORT": str(self.port),
                    "WEB_CONCURRENCY": "2",
                    "GUNICORN_ACCESS_LOG": "/dev/null",
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_celery(self) -> None:
        with self._log("celery") as log:
            self.celery = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "taskq_project",
                    "worker",
                    "-B",
                    "--schedule",
                    str(self.workdir / "celerybeat-schedule"),
                    "--loglevel",
                    "WARNING",
                    "--concurrency",
                    "1",
                    "--without-mingle",
                    "--without-gossip",
                ],
                cwd=BASE_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def web_workers(self) -> list[int]:
        return [] if self.web is None else children(self.web.pid)

    def health(self) -> tuple[int | None, Any]:
        recorder = client.Recorder(self.workdir / "health.jsonl", "nemesis")
        try:
            api = client.Api(self.port, "", recorder, timeout=3)
            return api.call("health", "GET", "/healthz", None)
        finally:
            recorder.close()

    def healthy(self) -> bool:
        return self.health()[0] == 200

    def wait_healthy(self, timeout: float = 90) -> float:
        began = time.monotonic()
        wait_for(self.healthy, timeout=timeout, interval=0.3)
        return time.monotonic() - began

    def db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.cluster.url("taskq"), autocommit=True, connect_timeout=5)

    def seconds_to_last_expiry(self) -> float | None:
        """Until the last lease in progress expires (negative: since), None if none is."""
        with self.db() as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM max(lease_expires_at) - statement_timestamp())::float8,"
                " count(*) FROM tasks_app_task WHERE status = 'in_progress'"
            ).fetchone()
        assert row is not None
        return None if row[1] == 0 else float(row[0])

    def final_state(self) -> dict[str, Any]:
        with self.db() as conn:
            read_at = conn.execute(
                "SELECT extract(epoch FROM statement_timestamp())::float8"
            ).fetchone()
            rows = conn.execute(
                "SELECT id, status, retries_left, attempt, lease_token::text,"
                " extract(epoch FROM lease_expires_at)::float8 FROM tasks_app_task ORDER BY id"
            ).fetchall()
        assert read_at is not None
        keys = ("id", "status", "retries_left", "attempt", "lease_token", "lease_expires_at")
        return {"read_at": read_at[0], "tasks": [dict(zip(keys, row, strict=True)) for row in rows]}

    def heal(self) -> None:
        """Whatever the nemesis left behind: everything up again."""
        self.heal_postgres()
        if self.web is None or self.web.poll() is not None:
            kill(self.orphans_of_web())
            self.start_web()
        if self.celery is None or self.celery.poll() is not None:
            self.start_celery()
        self.wait_healthy()

    def heal_postgres(self) -> None:
        if (self.cluster.data / "postmaster.pid").exists():
            self.cluster.resume(self.cluster.pids())
        else:
            self.cluster.start()

    def orphans_of_web(self) -> list[int]:
        """Web workers whose master is gone, found by the server's command line."""
        found = []
        for pid, _ in _processes():
            try:
                cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
                environ = (Path("/proc") / str(pid) / "environ").read_bytes()
            except OSError:
                continue
            port = f"PORT={self.port}".encode()
            if b"gunicorn" in cmdline and port in environ.split(b"\0"):
                found.append(pid)
        return found

    def close(self) -> None:
        for process in (self.web, self.celery):
            if process is not None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        kill(self.orphans_of_web())
        try:
            self.cluster.destroy()
        finally:
            # The queue's messages and its exchange table: the folder is shared.
            for leftover in [
                *BROKER_DIR.glob(f"*.{self.queue}.msg"),
                *BROKER_DIR.glob(f"{self.queue}.exchange"),
            ]:
                leftover.unlink(missing_ok=True)


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports of 127.0.0.1 (HAProxy's, then the servers')."""
    rng = random.Random()
    for _ in range(200):
        # Below the kernel's ephemeral ports, which other connections take.
        first = rng.randrange(20_000, 32_000)
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


class ClusterStack(Stack):
    """`make cluster`'s layout (scripts/cluster.py) on the run's own PostgreSQL.

    HAProxy listens on `port` and the app servers on the ports after it; the
    supervisor restarts whatever dies, so the nemesis only kills. Its state
    file tells each process's pid.
    """

    def __init__(self, workdir: Path, servers: int = 3) -> None:
        super().__init__(workdir)
        self.port = free_ports(servers + 1)
        self.server_ports = {f"app{n}": self.port + n for n in range(1, servers + 1)}
        self.cluster_dir = workdir / "cluster"
        self.supervisor: subprocess.Popen[bytes] | None = None
        # As `make cluster` is given them: scripts/cluster.py picks the broker.
        inherited = {
            key: os.environ[key]
            for key in ("CELERY_BROKER_URL", "TASKQ_CACHE_URL")
            if os.environ.get(key)
        }
        self.env = {
            **{key: value for key, value in self.env.items() if key not in CLUSTER_VARIABLES},
            **inherited,
            # PostgreSQL itself: the app servers go through PgBouncer in front of it.
            "DATABASE_URL": self.cluster.url("taskq"),
            "PORT": str(self.port),
            "TASKQ_CLUSTER_DIR": str(self.cluster_dir),
            "TASKQ_CLUSTER_SERVERS": str(servers),
        }

    def start(self) -> None:
        self.prepare_database()
        self.cluster_dir.mkdir(parents=True, exist_ok=True)
        # PgBouncer refuses root: it runs as another user, who must reach its
        # configuration under the work directory (a private temporary one).
        self.workdir.chmod(0o755)
        with self._log("cluster") as log:
            self.supervisor = subprocess.Popen(
                # cluster.py execs the supervisor: this pid is the supervisor's,
                # which stops the cluster when this process goes.
                [sys.executable, "scripts/cluster.py", "run", "--watch-parent"],
                cwd=BASE_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_healthy(timeout=180)

    def state(self) -> dict[str, Any]:
        try:
            path = self.cluster_dir / "run" / "stack.json"
            state: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return state

    def pid(self, name: str) -> int | None:
        """The live process the supervisor runs as `name`, None while there is none."""
        record = self.state().get("processes", {}).get(name)
        if record is None:
            return None
        fields = _stat(record["pid"])
        if fields is None or fields[0] in ("Z", "X") or int(fields[19]) != record["start_time"]:
            return None
        return int(record["pid"])

    def names(self) -> list[str]:
        """Every process of the cluster: the servers, PgBouncer, HAProxy, Celery, and a
        redis-server of its own when this machine runs none."""
        expected = [*self.server_ports, "pgbouncer", "haproxy", "worker", "beat"]
        started = self.state().get("processes", {})
        return expected + [name for name in started if name not in expected]

    def server_healthy(self, name: str) -> bool:
        """The app server itself, not through HAProxy."""
        recorder = client.Recorder(self.workdir / "health.jsonl", "nemesis")
        try:
            api = client.Api(self.server_ports[name], "", recorder, timeout=3)
            return api.call("health", "GET", "/healthz", None)[0] == 200
        finally:
            recorder.close()

    def ready(self) -> bool:
        if self.supervisor is None or self.supervisor.poll() is not None:
            # It stops the whole cluster when a process dies too often.
            raise RuntimeError(f"the cluster's supervisor is gone: see {self.workdir}/cluster.log")
        if any(self.pid(name) is None for name in self.names()):
            return False
        return self.healthy() and all(self.server_healthy(name) for name in self.server_ports)

    def wait_healthy(self, timeout: float = 90) -> float:
        """Until every process runs and answers, each server directly and HAProxy."""
        began = time.monotonic()
        wait_for(self.ready, timeout=timeout, interval=0.3)
        return time.monotonic() - began

    def heal(self) -> None:
        self.heal_postgres()
        self.wait_healthy()

    def broker_url(self) -> str | None:
        """The broker scripts/cluster.py chose, from the banner it printed."""
        try:
            log = (self.workdir / "cluster.log").read_text(errors="replace")
        except OSError:
            return None
        for line in log.splitlines():
            if "Celery worker and beat on " in line:
                return line.split("Celery worker and beat on ", 1)[1].split(";")[0].strip()
        return None

    def forget_queue(self) -> None:
        """The run's queue in the broker, which may be this machine's Redis."""
        url = self.broker_url()
        if not url or not url.startswith("redis"):
            return
        try:
            import redis

            broker = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
            keys = [*broker.scan_iter(match=f"{self.queue}*"), f"_kombu.binding.{self.queue}"]
            broker.delete(*keys)
        except Exception:
            pass  # the cluster's own Redis, gone with it

    def close(self) -> None:
        try:
            if self.supervisor is not None and self.supervisor.poll() is None:
                self.supervisor.terminate()
                try:
                    # The supervisor's SIGTERM, then SIGKILL 6 s later.
                    self.supervisor.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.supervisor.kill()
                    self.supervisor.wait(timeout=10)
            # Whatever is left of the stack, found by the id its processes inherited.
            subprocess.run(
                [sys.executable, "scripts/cluster.py", "stop"],
                cwd=BASE_DIR,
                env=self.env,
                capture_output=True,
                timeout=30,
                check=False,
            )
        finally:
            self.forget_queue()
            self.cluster.destroy()


@dataclass
class FaultEvent:
    kind: str
    began: float
    ended: float
    detail: dict[str, Any] = field(default_factory=dict)


class Nemesis(threading.Thread):
    """Injects the faults in shuffled rounds, each healed before the next.

    Runs at least until `deadline`, and on until every kind has been injected
    `each` times.
    """

    kinds: tuple[str, ...] = FAULT_KINDS

    def __init__(
        self,
        stack: Stack,
        rng: random.Random,
        deadline: float,
        say: Callable[[str], None],
        each: int = 1,
    ) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.stack = stack
        self.rng = rng
        self.deadline = deadline
        self.say = say
        self.each = each
        self.events: list[FaultEvent] = []
        self.error: BaseException | None = None
        self.injected: Counter[str] = Counter()

    def run(self) -> None:
        try:
            time.sleep(3)
            while True:
                kinds = list(self.kinds)
                self.rng.shuffle(kinds)
                for kind in kinds:
                    enough = all(self.injected[k] >= self.each for k in self.kinds)
                    if time.monotonic() >= self.deadline and enough:
                        return
                    self.inject(kind)
                    time.sleep(self.rng.uniform(2, 5))
        except BaseException as exc:
            self.error = exc

    def inject(self, kind: str) -> None:
        began = time.monotonic()
        detail: dict[str, Any] = getattr(self, kind)()
        detail["recovered_in"] = round(self.stack.wait_healthy(), 2)
        event = FaultEvent(kind, began, time.monotonic(), detail)
        self.events.append(event)
        self.injected[kind] += 1
        self.say(f"  fault {kind}: {json.dumps(detail)}")

    def kill_web_worker(self) -> dict[str, Any]:
        # Right after a restart the master may not have forked its workers yet.
        workers = wait_for(self.stack.web_workers, timeout=30)
        victim = self.rng.choice(workers)
        kill([victim])
        return {"pid": victim}

    def kill_web_master(self) -> dict[str, Any]:
        web = self.stack.web
        assert web is not None
        workers = self.stack.web_workers()
        kill([web.pid])
        web.wait()
        time.sleep(2)
        orphans = [pid for pid in workers if alive(pid)]
        answered = self.stack.health()[0]
        # A service manager restarting the server ends its old processes too;
        # they still hold the listening socket, so a new master could not bind.
        kill(orphans)
        wait_for(lambda: not any(alive(pid) for pid in orphans), timeout=10)
        self.stack.start_web()
        return {"pid": web.pid, "orphans_alive_after_2s": len(orphans), "orphans_served": answered}

    def kill_celery(self) -> dict[str, Any]:
        celery = self.stack.celery
        assert celery is not None
        kill([celery.pid])
        celery.wait()
        time.sleep(1)
        # The embedded beat and the pool are children that outlive the worker.
        orphans = process_group(celery.pid)
        kill(orphans)
        self.stack.start_celery()
        return {"pid": celery.pid, "orphans_alive_after_1s": len(orphans)}

    def stop_postgres(self) -> dict[str, Any]:
        self.stack.cluster.stop("immediate")
        down = self.rng.uniform(2, 4)
        time.sleep(down)
        self.stack.cluster.start()
        return {"down": round(down, 2)}

    def pause_postgres(self) -> dict[str, Any]:
        pids = self.stack.cluster.pause()
        paused = client.HTTP_TIMEOUT + self.rng.uniform(2, 4)
        try:
            time.sleep(paused)
        finally:
            self.stack.cluster.resume(pids)
        return {"paused": round(paused, 2), "processes": len(pids)}


class ClusterNemesis(Nemesis):
    """The faults of a cluster: each process killed is restarted by the supervisor."""

    kinds = CLUSTER_FAULT_KINDS
    stack: ClusterStack

    def __init__(
        self,
        stack: ClusterStack,
        rng: random.Random,
        deadline: float,
        say: Callable[[str], None],
        each: int = 1,
    ) -> None:
        super().__init__(stack, rng, deadline, say, each)
        self.stack = stack

    def _kill_supervised(self, name: str) -> tuple[dict[str, Any], float]:
        """SIGKILL to `name`, until the supervisor runs another; the detail, the kill's time."""
        pid = wait_for(lambda: self.stack.pid(name), timeout=30)
        killed = time.monotonic()
        kill([pid])

        def successor() -> int | None:
            new = self.stack.pid(name)
            return new if new != pid else None

        new = wait_for(successor, timeout=30, interval=0.05)
        restarted_in = round(time.monotonic() - killed, 2)
        return {"pid": pid, "new_pid": new, "restarted_in": restarted_in}, killed

    def kill_app_server(self) -> dict[str, Any]:
        name = self.rng.choice(sorted(self.stack.server_ports))
        detail, killed = self._kill_supervised(name)
        wait_for(lambda: self.stack.server_healthy(name), timeout=60, interval=0.1)
        detail["serving_in"] = round(time.monotonic() - killed, 2)
        # The window of the kill ends with the server back in HAProxy's rotation.
        time.sleep(HAPROXY_RISE_SECONDS)
        return {"server": name, **detail}

    def kill_pgbouncer(self) -> dict[str, Any]:
        return self._kill_supervised("pgbouncer")[0]

    def kill_celery(self) -> dict[str, Any]:
        # The worker, then beat, in turn: each is a process of its own here.
        name = ("worker", "beat")[self.injected["kill_celery"] % 2]
        return {"process": name, **self._kill_supervised(name)[0]}


@dataclass
class RunResult:
    report: checker.Report
    faults: Counter[str]
    events: list[FaultEvent]
    statuses: Counter[tuple[str, str]]
    figures: str
    workdir: Path
    # Client processes that did not exit cleanly: their load is missing.
    client_failures: dict[str, int | None]

    # Why the run proves nothing, however clean its verdict (see exercised()).
    unexercised: list[str] = field(default_factory=list)
    # --cluster: the stale releases and the outages of the app-server kills.
    availability: "Availability | None" = None

    @property
    def ok(self) -> bool:
        return (
            self.report.ok
            and not self.client_failures
            and not self.unexercised
            and (self.availability is None or self.availability.ok)
        )


@dataclass
class Outage:
    """Around one app-server kill: the longest time no lease worker's request was answered.

    Times are seconds since the load began (the clients' monotonic clock).
    An answer is any HTTP status below 500 (a 4xx is an answer too: the
    server decided); the window runs from the kill until the server is back
    in HAProxy's rotation, and the gap that holds the kill counts whole.
    """

    server: str
    at: float
    longest: float
    # The answers on either side of the longest gap.
    since: float
    until: float
    # Requests sent within the gap, and those of them that met no answer or a 5xx.
    sent: int
    failed: int
    # The slowest answer to a request sent in the window.
    slowest: float


@dataclass
class Availability:
    outages: list[Outage]
    # The longest gap between answers well away from any fault, for comparison.
    quiet_longest: float
    # Releases applied with a token a later capture had replaced (stale_token_accepted).
    stale_releases: int
    # The late releases of stalled leases, refused as they should be.
    stale_refused: int

    @property
    def longest(self) -> float:
        return max((outage.longest for outage in self.outages), default=math.inf)

    @property
    def ok(self) -> bool:
        return self.stale_releases == 0 and self.longest < UNAVAILABILITY_TARGET


def _answered(record: dict[str, Any]) -> bool:
    return checker.outcome(record) != checker.UNKNOWN


def outages(records: list[dict[str, Any]], events: list[FaultEvent], origin: float) -> list[Outage]:
    """Per app-server kill, from the lease workers' records (see Outage)."""
    mine = [record for record in records if str(record.get("client", "")).startswith("w")]
    answers = sorted(record["recv"] for record in mine if _answered(record))
    found = []
    for event in events:
        if event.kind != "kill_app_server":
            continue
        first = bisect.bisect_left(answers, event.began)
        if first == len(answers):
            # Nothing answered from the kill on: the cluster never came back.
            points = [event.began, math.inf]
        else:
            last = bisect.bisect_right(answers, event.ended)
            points = answers[max(first - 1, 0) : last + 1]
            if first == 0:
                points.insert(0, event.began)
            if last == len(answers):
                points.append(event.ended)
        since, until = max(itertools.pairwise(points), key=lambda gap: gap[1] - gap[0])
        inside = [record for record in mine if since < record["send"] < until]
        window = [r for r in mine if event.began <= r["send"] <= event.ended and _answered(r)]
        found.append(
            Outage(
                server=str(event.detail.get("server", "?")),
                at=event.began - origin,
                longest=until - since,
                since=since - origin,
                until=until - origin,
                sent=len(inside),
                failed=sum(1 for record in inside if not _answered(record)),
                slowest=max((r["recv"] - r["send"] for r in window), default=0.0),
            )
        )
    return found


def quiet_longest(
    records: list[dict[str, Any]], events: list[FaultEvent], began: float, ended: float
) -> float:
    """The longest gap between the lease workers' answers more than 1 s before and
    3 s after any fault, within the load: what the machine's own load makes."""
    answers = sorted(
        record["recv"]
        for record in records
        if str(record.get("client", "")).startswith("w")
        and _answered(record)
        and began <= record["recv"] <= ended
    )
    faults = [(event.began - 1, event.ended + 3) for event in events]
    return max(
        (
            b - a
            for a, b in itertools.pairwise(answers)
            if not any(a < end and b > start for start, end in faults)
        ),
        default=0.0,
    )


def availability(
    records: list[dict[str, Any]],
    final: dict[str, Any],
    report: checker.Report,
    events: list[FaultEvent],
    load: tuple[float, float],
) -> Availability:
    """The cluster's own figures; `load` is when the load began and stopped."""
    # The checker's stale_token_accepted for releases alone: judged without the
    # extends, which the staleness of a release does not depend on.
    without_extends = [record for record in records if record["op"] != "extend"]
    stale = checker.check(without_extends, final, sweep_grace=SWEEP_GRACE).counts()
    return Availability(
        outages=outages(records, events, load[0]),
        quiet_longest=quiet_longest(records, events, *load),
        stale_releases=stale["stale_token_accepted"],
        stale_refused=report.stats["per_id"].get("release stale_lease", 0),
    )


def exercised(
    records: list[dict[str, Any]],
    final: dict[str, Any],
    report: checker.Report,
    injected: Counter[str],
    kinds: tuple[str, ...] = FAULT_KINDS,
) -> list[str]:
    """What a run must have done for its clean verdict to mean anything.

    Every kind of fault ran, work went through, some outcomes were lost to the
    faults, and the checker is tied to this table: judged without its done
    tasks, the same history must show acknowledged work lost.
    """
    problems = [f"fault {kind} never ran" for kind in kinds if injected[kind] < 1]
    stats = report.stats
    if stats["final"].get("done", 0) <= 20:
        problems.append(f"only {stats['final'].get('done', 0)} tasks done")
    if stats["ops"].get("release unknown", 0) + stats["ops"].get("capture unknown", 0) == 0:
        problems.append("no capture or release met a fault")
    sabotaged = dict(final, tasks=[t for t in final["tasks"] if t["status"] != "done"])
    counts = checker.check(records, sabotaged, sweep_grace=SWEEP_GRACE).counts()
    if not (counts["lost_registration"] > 0 and counts["lost_done_release"] > 0):
        problems.append(f"the checker missed done tasks removed from the table: {counts}")
    return problems


def code_under_test() -> str:
    """The commit, and any change to it in the work tree: the stack runs the files as they are."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=BASE_DIR, capture_output=True, text=True, check=False
        ).stdout

    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    state = "clean"
    if changed:
        # Tells two different edits of the same files apart.
        digest = hashlib.sha1(git("diff", "HEAD").encode()).hexdigest()[:8]
        state = f"modified: {', '.join(line[3:] for line in changed)}, diff {digest}"
    return f"{git('rev-parse', '--short', 'HEAD').strip() or 'unknown commit'} ({state})"


def merge_history(history_dir: Path, into: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(history_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            # A process killed mid-write leaves at most a torn last line.
            for line in lines:
                if line.endswith("\n"):
                    records.append(json.loads(line))
    records.sort(key=lambda record: record["send"])
    with into.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return records


def drain(stack: Stack, api: client.Api, rng: random.Random, say: Callable[[str], None]) -> None:
    """Let every lease expire and be swept, then capture and finish what is left.

    Rounds until one meets no unknown outcome: a drain request that timed out
    may have left a lease of its own behind.
    """
    for round_ in range(10):
        remaining = stack.seconds_to_last_expiry()
        if remaining is not None and remaining > -2 * SWEEP_SECONDS:
            time.sleep(remaining + 2 * SWEEP_SECONDS)
        unknown = client.drain(api, NAMESPACE, rng)
        say(f"  drain round {round_ + 1}: {unknown} unknown outcomes")
        if unknown == 0:
            return
        stack.wait_healthy()


def wait_for_sweeper(stack: Stack, *, seconds: float = 60.0) -> None:
    """Until no lease is in progress, or one is overdue past the checker's
    grace, and the sweeper has finished a run since this call: a Celery
    worker that came back with the final heal has swept at least once before
    the table is read (else a lease long overdue, left by a worker that died
    during the run, would read as stuck)."""
    with stack.db() as conn:
        row = conn.execute("SELECT statement_timestamp()").fetchone()
    assert row is not None
    since = row[0]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        remaining = stack.seconds_to_last_expiry()
        if remaining is None or remaining < -SWEEP_GRACE - 1:
            with stack.db() as conn:
                swept = conn.execute(
                    "SELECT count(*) FROM tasks_app_sweeprecord"
                    " WHERE name = 'reclaim_expired_leases' AND finished_at > %s",
                    [since],
                ).fetchone()
            if swept is not None and swept[0]:
                return
        time.sleep(0.5)


def status_counts(records: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(op, HTTP status, or the exception's name when there was no answer)."""
    return Counter(
        (record["op"], str(record["status"] or (record["error"] or "?").split(":")[0]))
        for record in records
    )


def figures(
    *,
    seconds: float,
    workers: int,
    seed: int,
    elapsed: float,
    report: checker.Report,
    nemesis: Nemesis,
    statuses: Counter[tuple[str, str]],
    history: Path,
    tree: str,
    client_failures: dict[str, int | None],
    unexercised: list[str],
    availability: Availability | None = None,
    layout: str = "",
) -> str:
    stats = report.stats
    lines = [
        f"taskq fault injection{layout}: {seconds:g} s of load or more, {workers} workers, "
        f"seed {seed} ({elapsed:.0f} s in all: setup, load until every fault ran, drain)",
        f"code under test: {tree}",
        f"history: {history}",
        "",
        f"{'operations':<28}{stats['operations']:>8}",
    ]
    for op in ("register", "capture", "release", "extend"):
        counts = "".join(
            f"{result} {stats['ops'].get(f'{op} {result}', 0):>6}   "
            for result in (checker.OK, checker.REFUSED, checker.UNKNOWN)
        )
        lines.append(f"  {op:<10}{counts}")
    lines.append("answers by status")
    for op in ("register", "capture", "release", "extend"):
        mine = sorted((status, n) for (of, status), n in statuses.items() if of == op)
        lines.append(f"  {op:<10}" + ", ".join(f"{status}: {n}" for status, n in mine))
    lines.append("per-id answers of release and extend")
    for key, n in stats["per_id"].items():
        lines.append(f"  {key:<26}{n:>8}")
    lines += [
        f"{'tasks sent':<28}{stats['tasks_sent']:>8}",
        f"{'tasks acknowledged':<28}{stats['tasks_acknowledged']:>8}",
        f"{'leases seen':<28}{stats['leases_seen']:>8}",
        f"{'highest attempt':<28}{stats['max_attempt']:>8}",
        "final state " + ", ".join(f"{status} {n}" for status, n in stats["final"].items()),
        "faults injected",
    ]
    for kind in nemesis.kinds:
        lines.append(f"  {kind:<26}{nemesis.injected[kind]:>8}")
    if availability is None:
        orphans = sum(e.detail.get("orphans_alive_after_2s", 0) for e in nemesis.events)
        served = sum(1 for e in nemesis.events if e.detail.get("orphans_served") == 200)
        lines.append(
            f"  (web workers alive 2 s after their master's kill: {orphans}; "
            f"/healthz answered by them {served} times)"
        )
    lines.append("violations")
    for kind, n in report.counts().items():
        lines.append(f"  {kind:<26}{n:>8}")
    if availability is not None:
        lines += availability_lines(availability)
    lines.append("anomalies (reported, not counted)")
    for kind, n in report.anomaly_counts().items():
        lines.append(f"  {kind:<26}{n:>8}")
    for violation in [*report.violations, *report.anomalies][:30]:
        lines.append(f"  ! {violation.kind} {violation.task_id}: {violation.detail}")
    for name, code in client_failures.items():
        lines.append(f"  ! client process {name} exited with {code}: its load is missing")
    for problem in unexercised:
        lines.append(f"  ! the run did not exercise the stack: {problem}")
    verdict = "OK" if report.ok else f"FAILED: {len(report.violations)} violations"
    if availability is not None and not availability.ok:
        failed = []
        if not availability.outages:
            failed.append("no app-server kill to measure")
        if availability.stale_releases:
            failed.append(f"{availability.stale_releases} stale releases accepted")
        if availability.outages and availability.longest >= UNAVAILABILITY_TARGET:
            failed.append(
                f"{availability.longest:.2f} s without an answer after an app-server kill "
                f"(target < {UNAVAILABILITY_TARGET:g} s)"
            )
        verdict = ("FAILED: " if report.ok else f"{verdict}; ") + "; ".join(failed)
    if client_failures:
        verdict += "; INVALID RUN: client processes failed"
    if unexercised:
        verdict += "; INVALID RUN: it proves nothing (above)"
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)


def availability_lines(figures: Availability) -> list[str]:
    lines = [
        f"  {'stale releases accepted':<26}{figures.stale_releases:>8}",
        f"  (late releases refused as stale_lease, as they should be: {figures.stale_refused})",
        "unavailability after an app-server kill (no lease worker's request answered)",
    ]
    for outage in figures.outages:
        lines.append(
            f"  {outage.server} killed at {outage.at:6.1f} s: {outage.longest:5.2f} s "
            f"(answers at {outage.since:.2f} and {outage.until:.2f} s; {outage.sent} requests "
            f"sent between, {outage.failed} unanswered; slowest answer {outage.slowest:.2f} s)"
        )
    lines += [
        f"  {'longest':<26}{figures.longest:>8.2f} s  (target < {UNAVAILABILITY_TARGET:g} s)",
        f"  {'away from any fault':<26}{figures.quiet_longest:>8.2f} s  (the load's own gaps)",
    ]
    return lines


def run(
    *,
    seconds: float = 120,
    workers: int = 16,
    seed: int | None = None,
    workdir: Path | None = None,
    out: TextIO | None = None,
    cluster: bool = False,
    servers: int = 3,
) -> RunResult:
    """The whole run; see the module docstring. Prints progress and the figures to `out`.

    `cluster`: against scripts/cluster.py's layout with `servers` app servers.
    """
    seed = random.randrange(1_000_000) if seed is None else seed
    workdir = workdir or Path(tempfile.mkdtemp(prefix="taskq-faults-"))
    history_dir = workdir / "history"
    history_dir.mkdir(parents=True, exist_ok=True)
    stream = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    began = time.monotonic()
    tree = code_under_test()
    stack = ClusterStack(workdir, servers) if cluster else Stack(workdir)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    processes: list[multiprocessing.process.BaseProcess] = []
    try:
        if isinstance(stack, ClusterStack):
            say(
                f"work directory {workdir}; starting PostgreSQL and the cluster: PgBouncer, "
                f"{servers} app servers behind HAProxy on 127.0.0.1:{stack.port}, Celery"
            )
        else:
            say(f"work directory {workdir}; starting PostgreSQL, gunicorn and Celery")
        stack.start()
        setup = client.Recorder(workdir / "setup.jsonl", "setup")
        try:
            status = client.Api(stack.port, stack.operator_token, setup).call(
                "namespace", "POST", "/v1/namespace", {"id": NAMESPACE}
            )[0]
        finally:
            setup.close()
        if status != 201:
            raise RuntimeError(f"registering the namespace answered {status}")
        shared = (NAMESPACE, seed, str(history_dir), stop)
        processes = [
            context.Process(
                target=client.worker,
                args=(i, stack.port, stack.worker_token, *shared),
                name=f"faults-worker-{i}",
            )
            for i in range(workers)
        ]
        # Registrations keep ahead of what the workers finish, so none waits long.
        processes.append(
            context.Process(
                target=client.registrar,
                args=(stack.port, stack.operator_token, *shared, 3.0 * workers),
                name="faults-registrar",
            )
        )
        for process in processes:
            process.start()
        load_began = time.monotonic()
        say(f"load: {workers} workers and a registrar for at least {seconds:g} s")
        nemesis_rng = random.Random(f"{seed}-nemesis")
        nemesis = (
            ClusterNemesis(stack, nemesis_rng, load_began + seconds, say)
            if isinstance(stack, ClusterStack)
            else Nemesis(stack, nemesis_rng, load_began + seconds, say)
        )
        nemesis.start()
        nemesis.join()
        if nemesis.error is not None:
            raise RuntimeError("the nemesis failed") from nemesis.error
        stop.set()
        load_stopped = time.monotonic()
        for process in processes:
            process.join(timeout=60)
        client_failures = {p.name: p.exitcode for p in processes if p.exitcode != 0}
        say("load stopped; healing, letting leases expire, draining")
        stack.heal()
        drain_api = client.Api(
            stack.port, stack.worker_token, client.Recorder(history_dir / "drain.jsonl", "drain")
        )
        try:
            drain(stack, drain_api, random.Random(f"{seed}-drain"), say)
        finally:
            drain_api.recorder.close()
        wait_for_sweeper(stack)
        final = stack.final_state()
    finally:
        stop.set()
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
        stack.close()
    # Another process may edit the work tree meanwhile; restarts pick that up.
    tree_at_end = code_under_test()
    if tree_at_end != tree:
        tree = f"{tree} at the start, {tree_at_end} at the end"
    (workdir / "final.json").write_text(json.dumps(final, indent=1))
    records = merge_history(history_dir, workdir / "history.jsonl")
    report = checker.check(records, final, sweep_grace=SWEEP_GRACE)
    unexercised = exercised(records, final, report, nemesis.injected, nemesis.kinds)
    figured = None
    if cluster:
        figured = availability(records, final, report, nemesis.events, (load_began, load_stopped))
        # On the clients' clock (time.monotonic), as history.jsonl's send and recv.
        events = {
            "load": [load_began, load_stopped],
            "faults": [dataclasses.asdict(event) for event in nemesis.events],
            "outages": [dataclasses.asdict(outage) for outage in figured.outages],
        }
        (workdir / "events.json").write_text(json.dumps(events, indent=1))
    statuses = status_counts(records)
    text = figures(
        seconds=seconds,
        workers=workers,
        seed=seed,
        elapsed=time.monotonic() - began,
        report=report,
        nemesis=nemesis,
        statuses=statuses,
        history=workdir / "history.jsonl",
        tree=tree,
        client_failures=client_failures,
        unexercised=unexercised,
        availability=figured,
        layout=f" (cluster: {servers} app servers behind HAProxy, PgBouncer)" if cluster else "",
    )
    say(text)
    return RunResult(
        report,
        nemesis.injected,
        nemesis.events,
        statuses,
        text,
        workdir,
        client_failures,
        unexercised,
        figured,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=120, help="seconds of load (120)")
    parser.add_argument("--workers", type=int, default=16, help="lease worker processes (16)")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--workdir", type=Path, help="where the history and logs go")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="against scripts/cluster.py's layout: HAProxy, app servers, PgBouncer, Redis",
    )
    parser.add_argument(
        "--servers", type=int, default=3, help="app servers with --cluster (3); at least 2"
    )
    args = parser.parse_args(argv)
    if args.cluster and args.servers < 2:
        parser.error("--servers: losing the only app server is an outage by design")
    result = run(
        seconds=args.seconds,
        workers=args.workers,
        seed=args.seed,
        workdir=args.workdir,
        cluster=args.cluster,
        servers=args.servers,
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
