"""Jepsen-style fault injection against the real stack: is anything acknowledged lost?

    .venv/bin/python scripts/faults.py [--seconds N] [--workers K] [--seed S] [--workdir DIR]

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
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import secrets
import signal
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
        self.cluster.start()
        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE taskq")
        self.manage("migrate", "--noinput", TASKQ_DB_STATEMENT_TIMEOUT_MS="0")
        self.operator_token = self.manage("create_api_token", "faults-operator").splitlines()[-1]
        self.worker_token = self.manage(
            "create_api_token", "faults-worker", "--role", "worker", "--namespace", NAMESPACE
        ).splitlines()[-1]
        self.start_web()
        self.start_celery()
        self.wait_healthy()

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
        if (self.cluster.data / "postmaster.pid").exists():
            self.cluster.resume(self.cluster.pids())
        else:
            self.cluster.start()
        if self.web is None or self.web.poll() is not None:
            kill(self.orphans_of_web())
            self.start_web()
        if self.celery is None or self.celery.poll() is not None:
            self.start_celery()
        self.wait_healthy()

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
                kinds = list(FAULT_KINDS)
                self.rng.shuffle(kinds)
                for kind in kinds:
                    enough = all(self.injected[k] >= self.each for k in FAULT_KINDS)
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

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.client_failures and not self.unexercised


def exercised(
    records: list[dict[str, Any]],
    final: dict[str, Any],
    report: checker.Report,
    injected: Counter[str],
) -> list[str]:
    """What a run must have done for its clean verdict to mean anything.

    Every kind of fault ran, work went through, some outcomes were lost to the
    faults, and the checker is tied to this table: judged without its done
    tasks, the same history must show acknowledged work lost.
    """
    problems = [f"fault {kind} never ran" for kind in FAULT_KINDS if injected[kind] < 1]
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


def wait_for_sweeper(stack: Stack) -> None:
    """Until no lease is in progress, or one is overdue past the checker's grace."""
    while True:
        remaining = stack.seconds_to_last_expiry()
        if remaining is None or remaining < -SWEEP_GRACE - 1:
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
) -> str:
    stats = report.stats
    lines = [
        f"taskq fault injection: {seconds:g} s of load or more, {workers} workers, seed {seed} "
        f"({elapsed:.0f} s in all: setup, load until every fault ran, drain)",
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
    for kind in FAULT_KINDS:
        lines.append(f"  {kind:<26}{nemesis.injected[kind]:>8}")
    orphans = sum(e.detail.get("orphans_alive_after_2s", 0) for e in nemesis.events)
    served = sum(1 for e in nemesis.events if e.detail.get("orphans_served") == 200)
    lines.append(
        f"  (web workers alive 2 s after their master's kill: {orphans}; "
        f"/healthz answered by them {served} times)"
    )
    lines.append("violations")
    for kind, n in report.counts().items():
        lines.append(f"  {kind:<26}{n:>8}")
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
    if client_failures:
        verdict += "; INVALID RUN: client processes failed"
    if unexercised:
        verdict += "; INVALID RUN: it proves nothing (above)"
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)


def run(
    *,
    seconds: float = 120,
    workers: int = 16,
    seed: int | None = None,
    workdir: Path | None = None,
    out: TextIO | None = None,
) -> RunResult:
    """The whole run; see the module docstring. Prints progress and the figures to `out`."""
    seed = random.randrange(1_000_000) if seed is None else seed
    workdir = workdir or Path(tempfile.mkdtemp(prefix="taskq-faults-"))
    history_dir = workdir / "history"
    history_dir.mkdir(parents=True, exist_ok=True)
    stream = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    began = time.monotonic()
    tree = code_under_test()
    stack = Stack(workdir)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    processes: list[multiprocessing.process.BaseProcess] = []
    try:
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
        nemesis = Nemesis(stack, random.Random(f"{seed}-nemesis"), load_began + seconds, say)
        nemesis.start()
        nemesis.join()
        if nemesis.error is not None:
            raise RuntimeError("the nemesis failed") from nemesis.error
        stop.set()
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
    unexercised = exercised(records, final, report, nemesis.injected)
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
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=120, help="seconds of load (120)")
    parser.add_argument("--workers", type=int, default=16, help="lease worker processes (16)")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--workdir", type=Path, help="where the history and logs go")
    args = parser.parse_args(argv)
    result = run(seconds=args.seconds, workers=args.workers, seed=args.seed, workdir=args.workdir)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
