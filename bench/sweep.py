"""Benchmark the lease sweeper: a million expired leases, and captures elsewhere meanwhile.

Run from the repository root:

    .venv/bin/python -m bench.sweep [--rows 1000000]

What it measures, in one run:

1. the seconds `tasks_app.sweeper.reclaim_expired_leases()` takes to reclaim
   `--rows` expired leases, in its real batches (`SWEEP_BATCH`);
2. the latency of `capture_tasks()` on another namespace, from a separate
   process with its own connection, in three windows: before the sweep
   (the baseline), during it, and after it.

The machine is shared and noisy, so the capture figure that counts is a ratio
measured in the same run by the same process: p99 during the sweep over p99
before it. The window after the sweep shows how far the machine drifted.

It never reads or writes the development database: everything happens in a
database of its own (`taskq_bench` on the configured server), dropped and
recreated at the start of every run and dropped again at the end (unless
`--keep`). Exits non-zero when the sweep did not reclaim exactly the leases
loaded.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any, TypeVar

from bench.common import (
    LOAD_IDLE_TASKS,
    LatencyPercentiles,
    Sampler,
    add_database_arguments,
    argument_parser,
    bench_database,
    line_buffered_stdout,
    load_average,
    machine_description,
    no_statement_timeout,
    percentile,
    settle,
    setup_django,
    use_database,
    verdict,
)

T = TypeVar("T")


BENCH_DB = "taskq_bench"
SWEEP_NAMESPACE = "bench-sweep"
PROBE_NAMESPACE = "bench-probe"
CAPTURE_LIMIT = 10

# The targets from the issue.
SWEEP_TARGET_SECONDS = 30.0
P99_RATIO_TARGET = 2.0

# Other processes using more CPUs than this in a window make its figures
# suspect (see CpuMeter).
NOISY_OTHERS_CPUS = 0.25

# The probe's first statements pay for connecting and a cold cache; they
# belong to no window.
PROBE_WARM_UP_SECONDS = 2.0
# Every this many batches, the sweep's plan is checked (a plain EXPLAIN, about
# a millisecond): a plan that flips mid-sweep would not show in the EXPLAIN
# ANALYZE taken before it.
PLAN_CHECK_EVERY = 10

# One in four expired leases has no retry left (it fails for good), the others
# become capturable again: both branches of the sweep's CASE are exercised.
#
# Expiry times are spread over the past hour by a multiplicative permutation
# of the row number (7919 is prime to 3,600,000), so they are distinct,
# reproducible without a random seed, and in no relation to the physical
# order of the rows: each batch, taken in expiry order, touches pages all over
# the table, as after a real mass expiry of leases taken at different times
# with different timeouts. The task's timestamps say it was captured `timeout`
# seconds before its lease expired.
LOAD_EXPIRED_LEASES = """
INSERT INTO tasks_app_task
    (id, namespace_id, timeout, retries_left, status,
     created_at, updated_at, available_at, lease_expires_at)
SELECT 'sweep-' || lpad(g::text, 7, '0'), %(namespace_id)s, v.timeout, v.retries_left,
       'in_progress',
       v.expires - make_interval(secs => v.timeout),
       v.expires - make_interval(secs => v.timeout),
       CASE WHEN v.retries_left > 0 THEN v.expires END,
       v.expires
FROM generate_series(1, %(rows)s) AS g
CROSS JOIN LATERAL (
    SELECT g %% 4 AS retries_left,
           60 * (1 + g %% 10) AS timeout,
           statement_timestamp()
               - make_interval(secs => 60 + ((g::bigint * 7919) %% 3600000) / 1000.0)
               AS expires
) AS v
"""

SERVER_COUNTERS = """
SELECT pg_current_wal_lsn()::text,
       (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),
       (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'tasks_app_task'),
       (SELECT autoanalyze_count FROM pg_stat_user_tables WHERE relname = 'tasks_app_task')
"""


# --- The load and the server's counters ----------------------------------------


def load(*, rows: int, probe_tasks: int) -> float:
    """Load the expired leases and the probe's idle tasks; return the seconds taken."""
    from django.db import connection

    from namespaces_app.models import Namespace

    started = time.monotonic()
    Namespace.objects.bulk_create([Namespace(id=SWEEP_NAMESPACE), Namespace(id=PROBE_NAMESPACE)])
    with connection.cursor() as cursor:
        # Straight into the table, one statement each: a million rows through
        # the ORM or `register_tasks` would take longer than the sweep.
        cursor.execute(LOAD_IDLE_TASKS, {"namespace_id": PROBE_NAMESPACE, "rows": probe_tasks})
        cursor.execute(LOAD_EXPIRED_LEASES, {"namespace_id": SWEEP_NAMESPACE, "rows": rows})
    return time.monotonic() - started


def explain_one_batch(batch_size: int) -> list[str]:
    """EXPLAIN ANALYZE one sweep batch on the loaded table, and roll it back."""
    from django.db import connection, transaction

    from tasks_app import lease

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN (ANALYZE, BUFFERS, WAL) " + lease.RECLAIM_EXPIRED, {"batch": batch_size}
        )
        lines = [row[0] for row in cursor.fetchall()]
        transaction.set_rollback(True)
    return lines


def server_counters() -> tuple[str, int, int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(SERVER_COUNTERS)
        lsn, checkpoints, autovacuums, autoanalyzes = cursor.fetchone()  # type: ignore[misc]
    return str(lsn), int(checkpoints), int(autovacuums or 0), int(autoanalyzes or 0)


def wal_bytes_since(lsn: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", [lsn])
        (diff,) = cursor.fetchone()  # type: ignore[misc]
    return int(diff)


# --- The capture probe (a separate process) ------------------------------------


def run_probe(
    db_name: str,
    session_settings: list[tuple[str, str]],
    ready: Event,
    stop: Event,
    backend_pid: Synchronized[int],
    results: Connection,
    rate: float = 0.0,
) -> None:
    """Capture and hand back tasks of the probe namespace in a loop until `stop`.

    With `rate` 0, as fast as it can (closed loop). Otherwise the captures
    start on a fixed schedule of `rate` a second (open loop), and each one's
    latency counts from when it was due: a capture that starts late because
    the one before it was slow is charged the wait, as a worker would see it.

    Runs in a process of its own (spawned: a fresh interpreter, Django and
    connection, nothing inherited from the parent's). Sends back, for each
    capture, when it started (time.monotonic, system-wide on Linux, so the
    parent can tell which window it fell in) and how long it took.
    """
    # The sweep's limit, as in production: so is the probe's.
    setup_django(keep_statement_timeout=True)
    use_database(db_name)
    from django.db import connection

    from tasks_app.services import capture_tasks, release_tasks

    apply_settings(connection, session_settings)

    def cycle() -> tuple[float, float, int]:
        started = time.monotonic()
        rows = capture_tasks(namespace_id=PROBE_NAMESPACE, limit=CAPTURE_LIMIT)
        took = time.monotonic() - started
        # Released as idle: the tasks go to the back of the queue and nothing
        # is used up, so the probe can run for as long as the benchmark needs.
        release_tasks(task_ids=[row.id for row in rows], status="idle")
        return started, took, len(rows)

    warm_until = time.monotonic() + PROBE_WARM_UP_SECONDS
    while time.monotonic() < warm_until:
        cycle()
    backend_pid.value = backend_pid_of(connection)
    ready.set()

    samples: list[tuple[float, float]] = []
    short = 0
    due = time.monotonic()
    while not stop.is_set():
        if rate:
            due += 1 / rate
            time.sleep(max(0.0, due - time.monotonic()))
        started, took, captured = cycle()
        if rate and started > due:
            took += started - due
        samples.append((started, took))
        short += captured < CAPTURE_LIMIT
    results.send((samples, short))
    results.close()


def apply_settings(connection: Any, session_settings: list[tuple[str, str]]) -> None:
    """SET parameters for this session only (experiments: `--sweep-set`, `--probe-set`)."""
    with connection.cursor() as cursor:
        for name, value in session_settings:
            cursor.execute("SELECT set_config(%s, %s, false)", [name, value])


def check_settings(connection: Any, session_settings: list[tuple[str, str]]) -> None:
    """Fail before the long load, not after it, on a parameter the server refuses."""
    from django.db import transaction

    with transaction.atomic(), connection.cursor() as cursor:
        for name, value in session_settings:
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])  # this transaction


def backend_pid_of(connection: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return int(pid)


# --- Where the time goes: sampling wait events ----------------------------------

WAIT_SAMPLE = """
SELECT pid, wait_event_type, wait_event, left(query, 80)
FROM pg_stat_activity
WHERE pid = ANY(%s) AND state = 'active'
"""


class WaitSampler(Sampler):
    """Samples what the probe's and the sweep's backends are doing, every few milliseconds.

    Only statements in flight count: the probe's captures (not its releases)
    and the sweep's batches. An active backend with no wait event is on a
    CPU, or waiting for one.
    """

    name = "wait sampler"

    def __init__(self, pids: dict[int, str], interval: float) -> None:
        from tasks_app import lease

        super().__init__(interval)
        self.pids = pids
        self.samples: list[tuple[float, str, str]] = []  # (when, whose, what)
        self._capture_prefix = lease.CAPTURE.strip()[:40]
        self.backend_pid = 0

    def started(self) -> None:
        from django.db import connection

        self.backend_pid = backend_pid_of(connection)

    def sample(self) -> None:
        from django.db import connection

        now = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute(WAIT_SAMPLE, [list(self.pids)])
            rows = cursor.fetchall()
        for pid, kind, event, query in rows:
            whose = self.pids[pid]
            if whose == "probe" and not query.strip().startswith(self._capture_prefix):
                continue
            what = f"{kind}:{event}" if kind else "CPU (no wait event)"
            self.samples.append((now, whose, what))

    def breakdown(self, whose: str, start: float, end: float, top: int = 4) -> str:
        counts = Counter(w for t, who, w in self.samples if who == whose and start <= t < end)
        total = sum(counts.values())
        if not total:
            return "no samples"
        shares = [f"{what} {n / total:.0%}" for what, n in counts.most_common(top)]
        return f"{', '.join(shares)} ({total:,} samples)"


class CpuMeter:
    """How much CPU the benchmark's processes and everything else on the machine use.

    The machine is shared: with two CPUs, another process's test suite can
    take as much CPU as the sweep. Reading /proc/stat (the whole machine) and
    /proc/PID/stat (the benchmark's own processes and database backends) at
    each window's edges tells the two apart. Linux and a local server only.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._tick = os.sysconf("SC_CLK_TCK")

    @classmethod
    def for_local(cls, pids: Sequence[int]) -> CpuMeter | None:
        """A meter, when every pid is a process of this machine (the server is local)."""
        try:
            meter = cls(pids)
            meter.reading()
        except (OSError, ValueError):
            return None
        return meter

    def reading(self) -> tuple[float, dict[int, float]]:
        """Busy CPU seconds so far: of the whole machine, and of each of the benchmark's pids."""
        with open("/proc/stat") as stat:
            # user nice system idle iowait irq softirq steal (guest is in user)
            ticks = [int(x) for x in stat.readline().split()[1:9]]
        machine = sum(ticks) - ticks[3] - ticks[4]
        ours: dict[int, float] = {}
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as stat:
                # Fields after the command name, which is in parentheses and
                # may contain spaces: utime and stime are the 12th and 13th.
                fields = stat.read().rsplit(")", 1)[1].split()
            ours[pid] = (int(fields[11]) + int(fields[12])) / self._tick
        return machine / self._tick, ours


@dataclass(frozen=True)
class CpuShare:
    ours: float  # CPUs' worth used by the benchmark's processes and backends
    others: float  # by everything else on the machine
    seconds_by_pid: dict[int, float]  # CPU seconds each of the benchmark's processes used

    @classmethod
    def between(
        cls,
        first: tuple[float, dict[int, float]],
        last: tuple[float, dict[int, float]],
        seconds: float,
    ) -> CpuShare:
        by_pid = {pid: last[1][pid] - first[1][pid] for pid in first[1]}
        machine, ours = last[0] - first[0], sum(by_pid.values())
        return cls(ours / seconds, max(0.0, machine - ours) / seconds, by_pid)


# --- Figures --------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    start: float  # time.monotonic()
    end: float
    cpu: CpuShare | None


def timed(meter: CpuMeter | None, action: Callable[[], T]) -> tuple[T, Span]:
    """Run `action`; return its result and when it ran, with the CPU used meanwhile."""
    first = meter.reading() if meter else None
    start = time.monotonic()
    result = action()
    end = time.monotonic()
    cpu = None
    if meter and first:
        cpu = CpuShare.between(first, meter.reading(), end - start)
    return result, Span(start, end, cpu)


@dataclass(frozen=True)
class Window(LatencyPercentiles):
    name: str
    start: float
    end: float
    cpu: CpuShare | None
    latencies: list[float] = field(repr=False)  # seconds, ascending

    @classmethod
    def of(cls, name: str, span: Span, samples: Sequence[tuple[float, float]]) -> Window:
        took = sorted(t for s, t in samples if span.start <= s < span.end)
        return cls(name, span.start, span.end, span.cpu, took)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def max_ms(self) -> float:
        return (self.latencies[-1] if self.latencies else math.nan) * 1000


@dataclass
class SweepRun:
    result: Any  # tasks_app.sweeper.ReclaimResult (imported only after django.setup())
    start: float
    end: float
    batch_seconds: list[float]
    # How each batch was planned: "unprepared" (sent as text), "custom" or
    # "generic" (a prepared statement, planned for its parameter or not).
    batch_plan_kinds: list[str]
    plans: dict[str, list[int]]  # plan text -> the batch numbers it was seen before
    generic_plan: list[str] | None  # EXPLAIN (GENERIC_PLAN), when a batch ran on one

    @property
    def seconds(self) -> float:
        return self.end - self.start


# The sweep's statement in pg_prepared_statements (psycopg prepares a
# statement after `prepare_threshold` executions when the settings turn
# server-side binding on), but not the EXPLAIN of it.
PREPARED_RECLAIM = """
SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)
FROM pg_prepared_statements
WHERE starts_with(ltrim(statement, E' \n'), %s)
"""


def sweep(batch_size: int) -> SweepRun:
    """Run the real sweeper, timing each of its batches and following its plan."""
    from django.db import connection

    from tasks_app import lease
    from tasks_app.sweeper import reclaim_expired_leases

    batch_seconds: list[float] = []
    kinds: list[str] = []
    plans: dict[str, list[int]] = {}
    head = lease.RECLAIM_EXPIRED.strip().split("\n")[0]
    counts = (0, 0)  # generic and custom plans of the prepared statement so far

    def plan_counts() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute(PREPARED_RECLAIM, [head])
            generic, custom = cursor.fetchone()  # type: ignore[misc]
        return int(generic), int(custom)

    # An execute wrapper sees the sweeper's statements without changing its
    # code: the sweeper runs exactly as Celery beat would run it. What it adds
    # (an EXPLAIN every few batches, a look at pg_prepared_statements after
    # each) runs outside the batches' timings and costs about a millisecond.
    def observe(
        execute: Callable[..., Any], query: str, params: Any, many: bool, context: Any
    ) -> Any:
        nonlocal counts
        if query != lease.RECLAIM_EXPIRED:
            return execute(query, params, many, context)
        batch = len(batch_seconds)
        if batch % PLAN_CHECK_EVERY == 0:
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (COSTS OFF) " + lease.RECLAIM_EXPIRED, params)
                plan = "\n".join(row[0] for row in cursor.fetchall())
            plans.setdefault(plan, []).append(batch)
        started = time.monotonic()
        try:
            return execute(query, params, many, context)
        finally:
            batch_seconds.append(time.monotonic() - started)
            generic, custom = plan_counts()
            kinds.append(
                "generic"
                if generic > counts[0]
                else "custom"
                if custom > counts[1]
                else "unprepared"
            )
            counts = (generic, custom)

    with connection.execute_wrapper(observe):
        start = time.monotonic()
        result = reclaim_expired_leases(batch_size=batch_size)
        end = time.monotonic()
    generic_plan = explain_generic(lease.RECLAIM_EXPIRED) if "generic" in kinds else None
    return SweepRun(result, start, end, batch_seconds, kinds, plans, generic_plan)


def explain_generic(query: str) -> list[str]:
    """The plan PostgreSQL uses for `query` whatever its parameters (PostgreSQL 16+)."""
    from django.db import connection

    # Placeholders as the server sees them; no parameters are sent, so
    # nothing else in the text is read as one.
    text = query.replace("%(batch)s", "$1")
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (GENERIC_PLAN, COSTS OFF) " + text)
        return [row[0] for row in cursor.fetchall()]


def verify(*, rows: int, probe_tasks: int, result: Any) -> list[str]:
    """What is wrong with the table after the sweep (nothing, when the sweep is right)."""
    from django.db import connection

    from tasks_app.models import Task

    problems: list[str] = []
    terminal = rows // 4  # rows g with g % 4 == 0 among 1..rows: no retry left
    if result.reclaimed != rows:
        problems.append(f"reclaimed {result.reclaimed:,} leases, {rows:,} were loaded")
    if result.retryable != rows - terminal:
        problems.append(f"{result.retryable:,} retryable, expected {rows - terminal:,}")
    still_expired = Task.objects.expired().count()
    if still_expired:
        problems.append(f"{still_expired:,} leases are still expired")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT namespace_id, status, available_at IS NOT NULL, count(*) "
            "FROM tasks_app_task GROUP BY 1, 2, 3"
        )
        found = {(ns, status, capturable): n for ns, status, capturable, n in cursor.fetchall()}
    expected = {
        (SWEEP_NAMESPACE, "failed", True): rows - terminal,
        (SWEEP_NAMESPACE, "failed", False): terminal,
        (PROBE_NAMESPACE, "idle", True): probe_tasks,
    }
    expected = {key: n for key, n in expected.items() if n}
    if found != expected:
        problems.append(f"tasks by (namespace, status, capturable): {found}, expected {expected}")
    return problems


def plan_summary(lines: Sequence[str]) -> str:
    """How a sweep batch finds its rows, in a few words.

    Two scans of the task table: the CTE's (aliased nothing), which should be
    a range scan of `task_lease_expiry_idx`, and the UPDATE's join back to
    the table by id (aliased `t`), which should probe an index on id rather
    than read the whole table once per batch.
    """
    scans = re.findall(
        r"(Seq Scan|Index Scan|Index Only Scan|Bitmap Heap Scan)(?: using (\S+))? "
        r"on tasks_app_task( t)?\b",
        "\n".join(lines),
    )
    join = next(
        (j for j in ("Nested Loop", "Hash Join", "Merge Join") if any(j in ln for ln in lines)),
        "no join",
    )

    def describe(kind: str, index: str) -> str:
        return f"{kind} on {index}" if index else kind.upper()

    cte = [describe(kind, index) for kind, index, alias in scans if not alias]
    target = [describe(kind, index) for kind, index, alias in scans if alias]
    return f"expired rows: {', '.join(cte) or '?'}; join by id: {join}, {', '.join(target) or '?'}"


# --- Main -----------------------------------------------------------------------


def setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not re.fullmatch(r"[a-z_.]+", name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argument_parser("bench.sweep", __doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="expired leases to sweep")
    parser.add_argument(
        "--probe-tasks", type=int, default=50_000, help="idle tasks in the probe's namespace"
    )
    parser.add_argument(
        "--probe-rate",
        type=float,
        default=0.0,
        help="captures a second on a fixed schedule, latency counted from when each was due "
        "(default 0: as fast as the probe can)",
    )
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=15.0,
        help="length of the probe windows before and after the sweep",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="sweep batch (default: the sweeper's own)"
    )
    parser.add_argument(
        "--wait-sample-ms",
        type=float,
        default=10.0,
        help="how often to sample the backends' wait events",
    )
    for side in ("sweep", "probe"):
        parser.add_argument(
            f"--{side}-set",
            type=setting,
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"experiment: SET a parameter for the {side}'s session only (repeatable), "
            "e.g. synchronous_commit=off or wal_compression=lz4",
        )
    parser.add_argument(
        "--drop-index",
        action="append",
        default=[],
        metavar="NAME",
        help="experiment: drop this index of the benchmark's database before loading "
        "(repeatable), e.g. tasks_app_task_id_f6fb25eb_like",
    )
    add_database_arguments(parser, BENCH_DB)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.probe_tasks < CAPTURE_LIMIT:
        parser.error(f"--rows must be positive and --probe-tasks at least {CAPTURE_LIMIT}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    line_buffered_stdout()
    # The sweep runs under the product's statement limit, as Celery beat runs
    # it; only the load and its VACUUM lift it (no_statement_timeout).
    setup_django(keep_statement_timeout=True)
    from tasks_app.sweeper import SWEEP_BATCH

    batch_size = args.batch_size or SWEEP_BATCH
    with bench_database(args.db_name, keep=args.keep):
        return run(args, batch_size)


def run(args: argparse.Namespace, batch_size: int) -> int:
    from django.db import connection

    for name, value in machine_description():
        print(f"{name}: {value}")
    print(f"database: {args.db_name}")
    if args.probe_rate:
        print(f"Probe: {args.probe_rate:g} captures/s on a fixed schedule (open loop)")
    else:
        print("Probe: captures as fast as it can (closed loop)")
    for side in ("sweep", "probe"):
        for name, value in getattr(args, f"{side}_set"):
            print(f"Experiment: {side} session SET {name} = {value}")
    for index in args.drop_index:
        print(f"Experiment: index {index} dropped")

    check_settings(connection, args.sweep_set + args.probe_set)
    with no_statement_timeout():
        with connection.cursor() as cursor:
            for index in args.drop_index:
                cursor.execute(f"DROP INDEX {connection.ops.quote_name(index)}")
        print(f"Loading {args.rows:,} expired leases and {args.probe_tasks:,} idle tasks...")
        load_seconds = load(rows=args.rows, probe_tasks=args.probe_tasks)
        print(f"  loaded in {load_seconds:.1f}s")

        # Statistics for the EXPLAIN ANALYZE; settle() analyses again afterwards.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE tasks_app_task")
        explain = explain_one_batch(batch_size)
        print(f"\nEXPLAIN (ANALYZE, BUFFERS, WAL) of one batch of {batch_size:,}, rolled back:")
        print("\n".join("  " + line for line in explain))
        settle()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_table_size('tasks_app_task'), pg_indexes_size('tasks_app_task'), "
            "current_setting('shared_buffers')"
        )
        heap, indexes, shared_buffers = cursor.fetchone()  # type: ignore[misc]
    print(
        f"Task table: {heap / 2**20:,.0f} MiB, its indexes {indexes / 2**20:,.0f} MiB "
        f"(shared_buffers {shared_buffers})"
    )

    # Spawn, not fork: the child must not share the parent's open connection.
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    probe_pid = context.Value("i", 0)
    receiver, sender = context.Pipe(duplex=False)
    probe = context.Process(
        target=run_probe,
        args=(args.db_name, args.probe_set, ready, stop, probe_pid, sender, args.probe_rate),
        name="capture-probe",
    )
    probe.start()
    sender.close()  # the child holds the sending end; recv() then fails if it dies
    try:
        if not ready.wait(timeout=120):
            raise SystemExit("the capture probe did not start")
        sweep_pid = backend_pid_of(connection)
        sampler = WaitSampler(
            {probe_pid.value: "probe", sweep_pid: "sweep"}, interval=args.wait_sample_ms / 1000
        )
        # Sampling runs through all three windows, so whatever it costs is in
        # the baseline too.
        with sampler:
            assert probe.pid is not None
            meter = CpuMeter.for_local(
                [os.getpid(), probe.pid, probe_pid.value, sweep_pid, sampler.backend_pid]
            )
            print(f"\nProbe alone for {args.baseline_seconds:.0f}s (baseline)...")
            _, before = timed(meter, lambda: time.sleep(args.baseline_seconds))

            print(f"Sweeping {args.rows:,} expired leases in batches of {batch_size:,}...")
            lsn, checkpoints, autovacuums, autoanalyzes = server_counters()
            apply_settings(connection, args.sweep_set)
            run_, during = timed(meter, lambda: sweep(batch_size))
            with connection.cursor() as cursor:
                for name, _ in args.sweep_set:
                    cursor.execute(f"RESET {name}")  # `setting` allows only [a-z_.]
            wal = wal_bytes_since(lsn)
            _, checkpoints_after, autovacuums_after, autoanalyzes_after = server_counters()

            print(f"Probe alone for {args.baseline_seconds:.0f}s (after the sweep)...")
            _, after = timed(meter, lambda: time.sleep(args.baseline_seconds))
        stop.set()
        samples, short = receiver.recv()
    finally:
        stop.set()
        probe.join(timeout=30)
        if probe.is_alive():
            # Only when this process failed first: the probe is then stuck
            # sending samples that nobody will read.
            probe.terminate()
            probe.join()
    if probe.exitcode != 0:
        raise SystemExit(f"the capture probe failed (exit code {probe.exitcode})")

    windows = [
        Window.of("before the sweep (baseline)", before, samples),
        Window.of("during the sweep", during, samples),
        Window.of("after the sweep", after, samples),
    ]
    problems = verify(rows=args.rows, probe_tasks=args.probe_tasks, result=run_.result)
    if short:
        problems.append(f"{short} probe captures got fewer than {CAPTURE_LIMIT} tasks")

    report(
        args=args,
        batch_size=batch_size,
        run_=run_,
        windows=windows,
        explain=explain,
        sampler=sampler,
        sweep_pid=sweep_pid,
        wal=wal,
        checkpoints=checkpoints_after - checkpoints,
        autovacuums=autovacuums_after - autovacuums,
        autoanalyzes=autoanalyzes_after - autoanalyzes,
    )
    if problems:
        print("\nVERIFICATION FAILED:\n" + "\n".join("  - " + p for p in problems))
        return 1
    print(
        f"\nVerified: {args.rows:,} reclaimed = {args.rows:,} loaded, 0 leases left expired, "
        f"all {args.probe_tasks:,} probe tasks idle again."
    )
    return 0


def report(
    *,
    args: argparse.Namespace,
    batch_size: int,
    run_: SweepRun,
    windows: list[Window],
    explain: list[str],
    sampler: WaitSampler,
    sweep_pid: int,
    wal: int,
    checkpoints: int,
    autovacuums: int,
    autoanalyzes: int,
) -> None:
    result = run_.result
    batches = sorted(run_.batch_seconds)
    before, during, after = windows
    ratio = during.p99_ms / before.p99_ms
    sweep_ok = run_.seconds < SWEEP_TARGET_SECONDS
    ratio_ok = ratio <= P99_RATIO_TARGET

    print(f"\n## Summary ({args.rows:,} expired leases, batches of {batch_size:,})\n")
    print("| Sweep | |")
    print("|---|---|")
    print(f"| seconds (`reclaim_expired_leases()`) | {run_.seconds:.2f} |")
    print(f"| rows reclaimed | {result.reclaimed:,} |")
    print(
        f"| of which retryable / failed for good | {result.retryable:,} "
        f"/ {result.failed_for_good:,} |"
    )
    print(f"| rows/s | {result.reclaimed / run_.seconds:,.0f} |")
    if during.cpu and sweep_pid in during.cpu.seconds_by_pid:
        # CPU time hardly depends on what else runs on the machine: the
        # figure to compare between runs, and between versions of the code.
        print(
            f"| CPU seconds of the sweep's backend | {during.cpu.seconds_by_pid[sweep_pid]:.1f} |"
        )
    print(f"| batches | {result.batches} |")
    print(
        f"| batch ms: first / p50 / p99 / max / last | {run_.batch_seconds[0] * 1000:.0f} / "
        f"{percentile(batches, 50) * 1000:.0f} / {percentile(batches, 99) * 1000:.0f} / "
        f"{batches[-1] * 1000:.0f} / {run_.batch_seconds[-1] * 1000:.0f} |"
    )
    # The WAL and checkpoint counters are the server's: on a shared server
    # they include what other databases wrote meanwhile.
    # A sweep whose batches slow down as it goes (dead index entries to step
    # over, a plan that changes) shows here rather than in the percentiles.
    n = len(run_.batch_seconds)
    tenths = [run_.batch_seconds[i * n // 10 : (i + 1) * n // 10] for i in range(10)]
    trend = " / ".join(f"{sum(t) / len(t) * 1000:.0f}" for t in tenths if t)
    print(f"| batch ms, mean of each tenth of the sweep | {trend} |")
    print(f"| WAL written (whole server) | {wal / 2**20:,.0f} MiB |")
    print(f"| checkpoints (whole server) | {checkpoints} |")
    print(f"| autovacuums / autoanalyzes of the task table | {autovacuums} / {autoanalyzes} |")
    kinds = Counter(run_.batch_plan_kinds)
    print(
        "| batches planned: unprepared / custom / generic plan | "
        f"{kinds['unprepared']} / {kinds['custom']} / {kinds['generic']} |"
    )
    for kind in ("custom", "generic"):
        pairs = zip(run_.batch_seconds, run_.batch_plan_kinds, strict=True)
        took = sorted(t for t, k in pairs if k == kind)
        if took and kinds["generic"]:
            print(f"| batch ms p50 on a {kind} plan | {percentile(took, 50) * 1000:.0f} |")
    if run_.generic_plan:
        print(f"| GENERIC plan | {plan_summary(run_.generic_plan)} |")
    print(f"| batch plan (EXPLAIN ANALYZE before) | {plan_summary(explain)} |")
    for plan, seen in run_.plans.items():
        print(f"| plan before batches {', '.join(map(str, seen))} | {plan_summary([plan])} |")

    print(
        f"\n| Capture probe (`capture_tasks(limit={CAPTURE_LIMIT})` on another namespace, "
        + (f"{args.probe_rate:g}/s open loop" if args.probe_rate else "closed loop")
        + ") "
        "| seconds | captures | captures/s | p50 ms | p99 ms | max ms "
        f"| CPUs used: benchmark / others (of {len(os.sched_getaffinity(0))}) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for w in windows:
        n = len(w.latencies)
        cpu = f"{w.cpu.ours:.2f} / {w.cpu.others:.2f}" if w.cpu else "n/a (server not local)"
        print(
            f"| {w.name} | {w.seconds:.1f} | {n:,} | {n / w.seconds:,.0f} | "
            f"{w.p50_ms:.2f} | {w.p99_ms:.2f} | {w.max_ms:.1f} | {cpu} |"
        )

    print("\n| Where the time goes (active backends, sampled) | |")
    print("|---|---|")
    print(f"| sweep, during the sweep | {sampler.breakdown('sweep', run_.start, run_.end)} |")
    for w in windows:
        print(f"| probe's captures, {w.name} | {sampler.breakdown('probe', w.start, w.end)} |")

    print("\n| Target | Measured | |")
    print("|---|---|---|")
    print(f"| sweep < {SWEEP_TARGET_SECONDS:.0f} s | {run_.seconds:.2f} s | {verdict(sweep_ok)} |")
    print(
        f"| capture p99 during / before <= {P99_RATIO_TARGET:.0f} | {ratio:.2f} "
        f"| {verdict(ratio_ok)} |"
    )
    # Not targets: how much the baseline itself moved, and the ratio against
    # the quieter of the two baselines, to judge how far the verdict above
    # rests on noise.
    quieter = min(before.p99_ms, after.p99_ms)
    print(f"| (drift: p99 after / before) | {after.p99_ms / before.p99_ms:.2f} | |")
    print(f"| (p99 during / the lower baseline p99) | {during.p99_ms / quieter:.2f} | |")
    busy = [w.name for w in windows if w.cpu and w.cpu.others > NOISY_OTHERS_CPUS]
    if busy:
        print(
            f"\nNoisy machine: other processes used more than {NOISY_OTHERS_CPUS} CPUs "
            f"{', '.join(busy)}; compare the CPU seconds, not the times, between runs."
        )
    if len(run_.plans) > 1:
        print("\nThe sweep's plan text changed during the run:")
        for plan, seen in run_.plans.items():
            print(
                f"  before batches {seen}:\n" + "\n".join("    " + ln for ln in plan.splitlines())
            )
    if run_.generic_plan:
        print("\nGeneric plan of the sweep's statement (EXPLAIN (GENERIC_PLAN)):")
        print("\n".join("  " + line for line in run_.generic_plan))
    print(f"\nLoad average at end: {load_average()}")


if __name__ == "__main__":
    sys.exit(main())
