"""Capture and release through HAProxy with 1, 2 and 3 app servers, against the raw-SQL limit.

Run from the repository root:

    .venv/bin/python -m bench.scaling [--seconds 8] [--servers 1 2 3] [--batches 1 100]
        [--workers 8] [--wal-rounds 200]

In one run, on one database of its own (`taskq_scaling`, or `--db-name`) on the
configured PostgreSQL server:

1. The raw-SQL limit: K processes run the product's capture and release
   statements straight over psycopg (bench/throughput.py's `sql_worker`) for S
   seconds at each batch size B, before the HTTP steps and again after them;
   the limit is the mean of the two, and their difference is the machine's
   drift during the run.
2. For each number of app servers N: `make cluster`'s layout (scripts/cluster.py
   with TASKQ_CLUSTER_SERVERS=N: PgBouncer in transaction mode, N app servers of
   WEB_CONCURRENCY processes each, HAProxy in front, the Celery worker and beat)
   is started, K processes loop capture(limit=B) then release(done) with the
   lease tokens through HAProxy (throughput.py's `http_worker`) for S seconds at
   each B, and the cluster is stopped again. A cluster of N servers each time,
   rather than three of which HAProxy is told to use N: cluster.py's HAProxy
   has no runtime API socket, and servers left out would still run on the
   same two cores (their health checks, their Celery); so each step is
   exactly what `make cluster` runs with N servers, and nothing else of ours.
   The cluster's Celery broker and cache are a redis-server of the
   benchmark's own, never the machine's Redis, which another stack may use.
3. WAL per task. Through HAProxy (one app server) one client registers R
   batches of B tasks, then captures and releases them all (done); the WAL
   position before, between and after gives the bytes of the registration and
   of the capture+release cycle, and their sum the full cycle. The position is
   the server's, every database's: pg_walinspect (when it can be created) reads
   the records in between and keeps this database's (those touching its
   relations, and every record of the transactions they belong to, commits
   included), beside the raw difference. The capture+release cycle is measured
   again with the raw-SQL statements. A warm-up of R/10 rounds comes first.
4. Where the CPU goes: over every step, the CPU time (/proc/<pid>/stat) of the
   client processes, HAProxy, each app server, PgBouncer, Celery, the
   PostgreSQL backends of this database and the server's background processes;
   and the whole machine's busy time, of which what is not ours is other users'.

The load generators, the cluster and PostgreSQL share the machine's cores.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    Cluster,
    CpuUsage,
    CpuWatch,
    Proc,
    RedisServer,
    add_database_arguments,
    argument_parser,
    bench_database,
    by_ancestry,
    connect,
    database_url,
    jsonb_as_text,
    load_average,
    machine_description,
    print_table,
    processes,
    setup_django,
)
from bench.throughput import (
    NAMESPACE,
    Run,
    enough_tasks,
    http_worker,
    reset_table,
    run_workers,
    sql_worker,
)

DATABASE = "taskq_scaling"
SERVERS = (1, 2, 3)
BATCHES = (1, 100)
WORKERS = 8
# The load processes start together this long after they are spawned (and
# per process more): on a loaded machine, spawning and importing take a
# while. A step whose last process began its loop later than LATE_SECONDS
# after the start is measured again, with twice the delay.
START_DELAY = 2.0
START_DELAY_PER_WORKER = 0.3
LATE_SECONDS = 0.2
ATTEMPTS = 3

# The process groups, in the order the CPU table shows them.
CLIENT = "client"
HAPROXY = "haproxy"
APP = "app servers"
PGBOUNCER = "pgbouncer"
CELERY = "celery"
STACK = "supervisor, redis"
PG_MINE = "postgres (this db)"
PG_BACKGROUND = "postgres (background)"
PG_OTHERS = "postgres (other dbs)"
OURS = (CLIENT, HAPROXY, APP, PGBOUNCER, CELERY, STACK, PG_MINE, PG_BACKGROUND)
# scripts/cluster.py's Procfile names.
STACK_NAMES = {"haproxy": HAPROXY, "pgbouncer": PGBOUNCER, "worker": CELERY, "beat": CELERY}
# A PostgreSQL child whose title names none of these is a client backend.
PG_BACKGROUND_TITLES = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "archiver",
    "stats collector",
    "walsender",
    "walreceiver",
    "startup",
)


# --- Where the CPU goes ----------------------------------------------------------------


def postmaster_pid() -> int | None:
    """The PostgreSQL server's postmaster, when it runs on this machine and /proc shows
    it: the parent of this connection's backend."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()  # type: ignore[misc]
    procs = processes()
    mine = procs.get(backend)
    # The same pid on another machine's server would be a stranger here.
    if mine is None or not mine.title.startswith("postgres"):
        return None
    parent = procs.get(mine.ppid)
    if parent is None or "postgres" not in parent.title:
        return None
    return parent.pid


@dataclass
class Groups:
    """Classifies the processes of a step (CpuWatch's `classify`): ours by ancestry
    (the benchmark and its load processes, the cluster's processes under its
    supervisor, the redis-server), PostgreSQL's by their titles."""

    database: str
    postmaster: int | None
    redis: RedisServer
    cluster: Cluster | None = None

    def __call__(self, procs: Mapping[int, Proc]) -> dict[int, str]:
        roots = {os.getpid(): CLIENT, self.redis.process.pid: STACK}
        if self.postmaster is not None:
            roots[self.postmaster] = "postgres"
        if self.cluster is not None:
            state = self.cluster.state()
            if "supervisor" in state:
                roots[state["supervisor"]["pid"]] = STACK
            for name, record in state.get("processes", {}).items():
                # app1, app2...: one group each, summed as APP in the tables.
                roots[record["pid"]] = STACK_NAMES.get(name, name)
        groups = by_ancestry(procs, roots)
        for pid, group in groups.items():
            if group == "postgres":
                groups[pid] = self._postgres(procs[pid])
        return groups

    def _postgres(self, proc: Proc) -> str:
        if proc.pid == self.postmaster:
            return PG_BACKGROUND
        if self.database in proc.title.split():
            return PG_MINE
        if any(name in proc.title for name in PG_BACKGROUND_TITLES):
            return PG_BACKGROUND
        return PG_OTHERS


def app_cores(cpu: CpuUsage) -> list[float]:
    """Each app server's cores, app1 first."""
    names = sorted((g for g in cpu.groups if g[3:].isdigit()), key=lambda g: int(g[3:]))
    return [cpu.cores(name) for name in names]


def cores_of(cpu: CpuUsage, group: str) -> float:
    if group == APP:
        return sum(app_cores(cpu), 0.0)
    return cpu.cores(group)


def ours(cpu: CpuUsage) -> float:
    return sum(cores_of(cpu, group) for group in OURS)


# --- WAL -------------------------------------------------------------------------------


@dataclass
class Wal:
    """The WAL written between two positions, per task of `tasks`."""

    tasks: int
    # pg_wal_lsn_diff: every database's, page headers included.
    server_bytes: int
    # This database's records (pg_walinspect), each MAXALIGNed as stored; None
    # when pg_walinspect could not be used.
    bytes: int | None = None
    records: int | None = None
    fpi_bytes: int | None = None
    by_manager: dict[str, int] = field(default_factory=dict)
    # PostgreSQL's CPU seconds for this database in the phase.
    postgres_cpu: float | None = None

    def per_task(self, value: float | None) -> float | None:
        return None if value is None else value / self.tasks

    def __add__(self, other: Wal) -> Wal:
        def plus(a: float | None, b: float | None) -> Any:
            return None if a is None or b is None else a + b

        managers = dict(self.by_manager)
        for name, value in other.by_manager.items():
            managers[name] = managers.get(name, 0) + value
        assert self.tasks == other.tasks
        return Wal(
            tasks=self.tasks,
            server_bytes=self.server_bytes + other.server_bytes,
            bytes=plus(self.bytes, other.bytes),
            records=plus(self.records, other.records),
            fpi_bytes=plus(self.fpi_bytes, other.fpi_bytes),
            by_manager=managers,
            postgres_cpu=plus(self.postgres_cpu, other.postgres_cpu),
        )


# This database's records between two positions: those whose block references
# name one of its relations (rel <tablespace>/<database>/<relfilenode>), and
# every record of the transactions those belong to (their commit records
# have no block reference). The end is held to the flushed position, which
# pg_walinspect requires; this benchmark's commits are flushed by then.
THIS_DATABASE_RECORDS = """
WITH r AS MATERIALIZED (
    SELECT xid::text AS xid, resource_manager, record_length, fpi_length,
           coalesce(block_ref, '') LIKE %(pattern)s AS touches
    FROM pg_get_wal_records_info(
        %(start)s::pg_lsn, least(%(end)s::pg_lsn, pg_current_wal_flush_lsn()))
), ours AS (
    SELECT DISTINCT xid FROM r WHERE touches AND xid <> '0'
)
SELECT resource_manager, count(*), sum((record_length + 7) / 8 * 8), sum(fpi_length)
FROM r
WHERE CASE WHEN xid <> '0' THEN xid IN (SELECT xid FROM ours) ELSE touches END
GROUP BY 1
"""


class WalMeter:
    """WAL positions, and what was written between two of them."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = connect(url)
        self.why_not: str | None = None
        try:
            self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        except psycopg.Error as exc:
            self.why_not = str(exc).strip().splitlines()[0]
        row = self.conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        self.pattern = f"%rel %/{row[0]}/%"

    @contextmanager
    def held(self) -> Iterator[None]:
        """Keep the server's WAL from here until the block ends, for pg_walinspect to read.

        The server removes or recycles segments at every checkpoint (other
        users' too), in seconds on a busy shared server: a temporary physical
        replication slot reserves them from now. It belongs to this session, so
        it goes with the connection whatever happens to this process, and is
        dropped at the end of the block.
        """
        import psycopg

        slot = f"bench_scaling_{os.getpid()}"
        try:
            self.conn.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", (slot,))
        except psycopg.Error as exc:
            # Without the slot pg_walinspect may find the segments gone.
            print(f"no replication slot to keep the WAL ({exc}); reading it may fail")
            yield
            return
        try:
            yield
        finally:
            self.conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))

    def position(self) -> str:
        row = self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def server_bytes(self, start: str, end: str) -> int:
        row = self.conn.execute(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint", (end, start)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def between(self, start: str, end: str, tasks: int) -> Wal:
        import psycopg

        wal = Wal(tasks=tasks, server_bytes=self.server_bytes(start, end))
        if self.why_not is not None:
            return wal
        try:
            rows = self.conn.execute(
                THIS_DATABASE_RECORDS, {"start": start, "end": end, "pattern": self.pattern}
            ).fetchall()
        except psycopg.errors.UndefinedFile as exc:  # a segment removed after all
            print(f"pg_walinspect: {str(exc).strip()}")
            return wal
        wal.by_manager = {str(name): int(size) for name, _, size, _ in rows}
        wal.records = sum(int(count) for _, count, _, _ in rows)
        wal.bytes = sum(wal.by_manager.values())
        wal.fpi_bytes = sum(int(fpi) for _, _, _, fpi in rows)
        return wal


class Api:
    """One keep-alive client of the API, for the WAL measurement's sequential rounds."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        import orjson

        payload = None if body is None else orjson.dumps(body)
        self.conn.request(method, path, body=payload, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != expect:
            raise RuntimeError(f"{method} {path} answered {response.status}: {data[:200]!r}")
        return orjson.loads(data)

    def register(self, prefix: str, batch: int, rounds: int) -> None:
        for r in range(rounds):
            tasks = [
                {"id": f"{prefix}-{r:06d}-{i:03d}", "namespace_id": NAMESPACE} for i in range(batch)
            ]
            self.call("POST", "/v1/task", tasks if batch > 1 else tasks[0], expect=201)

    def cycle(self, batch: int, rounds: int) -> int:
        done = 0
        for _ in range(rounds):
            captured = self.call("GET", f"/v1/task/capture?namespace_id={NAMESPACE}&limit={batch}")
            leases = [{"id": t["id"], "lease_token": t["lease_token"]} for t in captured["list"]]
            if not leases:
                raise RuntimeError("the WAL measurement ran out of tasks")
            self.call("PUT", "/v1/task/release", {"status": "done", "leases": leases})
            done += len(leases)
        return done

    def close(self) -> None:
        self.conn.close()


def wal_over_http(
    port: int, token: str, batch: int, rounds: int, meter: WalMeter, watch: CpuWatch
) -> tuple[Wal, Wal]:
    """(registration, capture+release) of `rounds` batches, one client through HAProxy."""
    reset_table(idle=0)
    api = Api(port, token)
    try:
        warm = max(1, rounds // 10)
        api.register("warm", batch, warm)
        api.cycle(batch, warm)
        tasks = rounds * batch
        with meter.held():
            first = meter.position()
            watch.measure(time.time())
            api.register("wal", batch, rounds)
            register_cpu = watch.finish()
            second = meter.position()
            watch.measure(time.time())
            done = api.cycle(batch, rounds)
            cycle_cpu = watch.finish()
            third = meter.position()
            if done != tasks:
                raise RuntimeError(f"released {done} tasks of {tasks}")
            register = meter.between(first, second, tasks)
            cycle = meter.between(second, third, tasks)
    finally:
        api.close()
    register.postgres_cpu = register_cpu.groups.get(PG_MINE)
    cycle.postgres_cpu = cycle_cpu.groups.get(PG_MINE)
    return register, cycle


def wal_over_sql(url: str, batch: int, rounds: int, meter: WalMeter, watch: CpuWatch) -> Wal:
    """Capture+release of `rounds` batches with the raw-SQL statements, one connection."""
    from tasks_app import lease

    warm = max(1, rounds // 10)
    reset_table(idle=(warm + rounds) * batch)
    with connect(url) as conn:
        jsonb_as_text(conn)

        def cycle(count: int) -> int:
            done = 0
            for _ in range(count):
                rows = conn.execute(
                    lease.CAPTURE, lease.capture_params(NAMESPACE, batch)
                ).fetchall()
                ids = [row[0] for row in rows]
                tokens = [row[lease.CAPTURED_TOKEN] for row in rows]
                conn.execute(lease.RELEASE, lease.release_params(ids, tokens, "done")).fetchall()
                done += len(ids)
            return done

        cycle(warm)
        with meter.held():
            first = meter.position()
            watch.measure(time.time())
            done = cycle(rounds)
            cpu = watch.finish()
            second = meter.position()
            if done != rounds * batch:
                raise RuntimeError(f"released {done} tasks of {rounds * batch}")
            wal = meter.between(first, second, done)
    wal.postgres_cpu = cpu.groups.get(PG_MINE)
    return wal


# --- The steps -----------------------------------------------------------------------------


@dataclass
class Step:
    """One measurement: raw SQL (servers 0) or through HAProxy with `servers` app servers."""

    label: str
    servers: int
    batch: int
    run: Run
    cpu: CpuUsage
    load: float  # 1-minute load average at its start
    wal_bytes: int  # the server's, every database's, over the window

    @property
    def per_second(self) -> float:
        return self.run.per_second


def measure(
    label: str,
    servers: int,
    batch: int,
    target: Any,
    args: tuple[Any, ...],
    options: argparse.Namespace,
    watch: CpuWatch,
    meter: WalMeter,
) -> Step:
    delay = START_DELAY + START_DELAY_PER_WORKER * options.workers
    for attempt in range(1, ATTEMPTS + 1):
        reset_table(idle=enough_tasks(batch, options.workers, options.seconds))
        load = os.getloadavg()[0]
        start = time.time() + delay
        watch.measure(start, start + options.seconds)
        run = run_workers(target, args, options.workers, options.seconds, start=start)
        cpu = watch.result()
        if run.late <= LATE_SECONDS:
            break
        print(
            f"{label} B={batch}: the last load process began {run.late:.1f} s late"
            + (f"; again with {delay * 2:g} s to start" if attempt < ATTEMPTS else ""),
            flush=True,
        )
        delay *= 2
    first, last = cpu.marks
    step = Step(label, servers, batch, run, cpu, load, meter.server_bytes(first, last))
    print(
        f"{label:<18} B={batch:<3} {run.per_second:>9,.0f} tasks/s  machine busy "
        f"{cpu.machine_busy / cpu.seconds:.2f} cores, ours {ours(cpu):.2f}, load {load:.2f}"
        + ("  (drained)" if run.ran_dry else ""),
        flush=True,
    )
    return step


def sql_steps(
    label: str, url: str, options: argparse.Namespace, watch: CpuWatch, meter: WalMeter
) -> list[Step]:
    return [
        measure(
            label,
            0,
            batch,
            sql_worker,
            (url, batch, "done", "leases", False),
            options,
            watch,
            meter,
        )
        for batch in options.batches
    ]


@dataclass
class Results:
    steps: list[Step] = field(default_factory=list)
    # (path, B) -> {"register", "cycle"} -> Wal
    wal: dict[tuple[str, int], dict[str, Wal]] = field(default_factory=dict)
    wal_why_not: str | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser("bench.scaling", __doc__ or "")
    add_database_arguments(parser, DATABASE)
    parser.add_argument("--seconds", type=float, default=8.0, help="Per measurement.")
    parser.add_argument(
        "--servers", type=int, nargs="+", default=list(SERVERS), help="App server counts."
    )
    parser.add_argument(
        "--batches", type=int, nargs="+", default=list(BATCHES), help="Batch sizes (1, 10, 100)."
    )
    parser.add_argument(
        "--workers", type=int, default=WORKERS, help="Client processes, the same in every step."
    )
    parser.add_argument(
        "--wal-rounds",
        type=int,
        default=200,
        help="Batches registered, then captured and released, per WAL measurement.",
    )
    args = parser.parse_args(argv)
    if any(batch not in (1, 10, 100) for batch in args.batches):
        parser.error("batch sizes are 1, 10 or 100 (bench/throughput.py sizes the table for them)")
    if any(n < 1 for n in args.servers) or args.workers < 1 or args.wal_rounds < 1:
        parser.error("servers, workers and rounds are at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django()
    from django.conf import settings

    from apikeys_app.services import create_token
    from namespaces_app.services import register_namespace

    results = Results()
    with bench_database(args.db_name, keep=args.keep):
        print_table(["", ""], machine_description(), title="Machine")
        register_namespace(namespace_id=NAMESPACE)
        _, worker_token = create_token(name="bench", role="worker")
        _, operator_token = create_token(name="bench-operator", role="operator")
        url = database_url()
        meter = WalMeter(url)
        results.wal_why_not = meter.why_not
        marks = connect(url)
        groups = Groups(
            database=str(settings.DATABASES["default"]["NAME"]),
            postmaster=postmaster_pid(),
            redis=RedisServer(Path(tempfile.gettempdir())),
        )

        def position() -> str:
            row = marks.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            return str(row[0])

        watch = CpuWatch(groups, mark=position)
        try:
            results.steps += sql_steps("raw SQL (before)", url, args, watch, meter)
            for servers in args.servers:
                cluster = Cluster(
                    servers,
                    redis=groups.redis,
                    # As bench/throughput.py's server: one token for every worker.
                    TASKQ_THROTTLE_WORKER="none",
                    TASKQ_THROTTLE_OPERATOR="none",
                    GUNICORN_ACCESS_LOG="/dev/null",
                )
                groups.cluster = cluster
                try:
                    label = f"HTTP, {servers} server" + ("s" if servers > 1 else "")
                    for batch in args.batches:
                        results.steps.append(
                            measure(
                                label,
                                servers,
                                batch,
                                http_worker,
                                (cluster.port, worker_token, batch, "done", "leases", False),
                                args,
                                watch,
                                meter,
                            )
                        )
                    if servers == min(args.servers):
                        for batch in args.batches:
                            register, cycle = wal_over_http(
                                cluster.port, operator_token, batch, args.wal_rounds, meter, watch
                            )
                            results.wal[("HTTP", batch)] = {"register": register, "cycle": cycle}
                finally:
                    groups.cluster = None
                    cluster.stop()
            for batch in args.batches:
                results.wal[("raw SQL", batch)] = {
                    "cycle": wal_over_sql(url, batch, args.wal_rounds, meter, watch)
                }
            results.steps += sql_steps("raw SQL (after)", url, args, watch, meter)
        finally:
            groups.redis.stop()
            marks.close()
            meter.conn.close()
        print(f"\nload average at the end: {load_average()}")
    report(results, args)
    return 0


# --- The report ----------------------------------------------------------------------------


def _ratio(value: float, base: float | None) -> str:
    return "-" if not base else f"{value / base:.2f}"


def report(results: Results, args: argparse.Namespace) -> None:
    steps = results.steps
    limit: dict[int, float] = {}
    for batch in args.batches:
        raw = [s.per_second for s in steps if s.servers == 0 and s.batch == batch]
        limit[batch] = sum(raw) / len(raw)
    one = {s.batch: s.per_second for s in steps if s.servers == min(args.servers)}
    print_table(
        [
            "B",
            "step",
            "tasks/s",
            "/ raw-SQL limit",
            f"/ {min(args.servers)} server",
            "capture p50 ms",
            "capture p99 ms",
            "server WAL MB/s",
            "load 1-min at start",
        ],
        [
            (
                s.batch,
                s.label
                + (" (drained)" if s.run.ran_dry else "")
                + (f" (began {s.run.late:.1f} s late)" if s.run.late > LATE_SECONDS else ""),
                round(s.per_second),
                _ratio(s.per_second, limit[s.batch]),
                _ratio(s.per_second, one.get(s.batch)) if s.servers else "-",
                s.run.p50_ms,
                s.run.p99_ms,
                s.wal_bytes / s.cpu.seconds / 1e6,
                s.load,
            )
            for batch in args.batches
            for s in steps
            if s.batch == batch
        ],
        title=(
            f"Capture + release done, K={args.workers} client processes, {args.seconds:g} s per "
            f"step (raw-SQL limit: the mean of before and after; app servers of "
            f"{os.environ.get('WEB_CONCURRENCY', '2')} processes, WEB_CONCURRENCY)"
        ),
    )
    print_table(
        ["B", "raw-SQL limit tasks/s", *(f"{n} server(s) / raw SQL" for n in args.servers)]
        + [f"{n} / {min(args.servers)} servers" for n in args.servers if n != min(args.servers)],
        [
            (
                batch,
                round(limit[batch]),
                *(
                    _ratio(s.per_second, limit[batch])
                    for n in args.servers
                    for s in steps
                    if s.servers == n and s.batch == batch
                ),
                *(
                    _ratio(s.per_second, one.get(batch))
                    for n in args.servers
                    if n != min(args.servers)
                    for s in steps
                    if s.servers == n and s.batch == batch
                ),
            )
            for batch in args.batches
        ],
        title="Ratios",
    )
    groups = [CLIENT, HAPROXY, APP, PGBOUNCER, CELERY, STACK, PG_MINE, PG_BACKGROUND]
    print_table(
        ["B", "step", *groups, "ours", "machine busy", "not ours", "app servers, each"],
        [
            (
                s.batch,
                s.label,
                *(cores_of(s.cpu, g) for g in groups),
                ours(s.cpu),
                s.cpu.machine_busy / s.cpu.seconds,
                s.cpu.machine_busy / s.cpu.seconds - ours(s.cpu),
                " / ".join(f"{c:.2f}" for c in app_cores(s.cpu)) or "-",
            )
            for batch in args.batches
            for s in steps
            if s.batch == batch
        ],
        title=(
            f"Where the CPU goes: cores kept busy (CPU seconds per second; the machine has "
            f"{len(os.sched_getaffinity(0))}). 'not ours': other users' processes "
            f"(PostgreSQL's other databases among them: "
            f"{PG_OTHERS!r}) and the kernel's own"
        ),
    )
    print_table(
        ["B", "step", "client", "app servers", "haproxy + pgbouncer", "postgres (this db)", "ours"],
        [
            (
                s.batch,
                s.label,
                *(
                    round(value * 1e6 / s.per_second) if s.per_second else "-"
                    for value in (
                        cores_of(s.cpu, CLIENT),
                        cores_of(s.cpu, APP),
                        cores_of(s.cpu, HAPROXY) + cores_of(s.cpu, PGBOUNCER),
                        cores_of(s.cpu, PG_MINE) + cores_of(s.cpu, PG_BACKGROUND),
                        ours(s.cpu),
                    )
                ),
            )
            for batch in args.batches
            for s in steps
            if s.batch == batch
        ],
        title="CPU microseconds per task (postgres: this database's backends and the background)",
    )
    report_wal(results, args, limit, steps)


def report_wal(
    results: Results, args: argparse.Namespace, limit: dict[int, float], steps: list[Step]
) -> None:
    if results.wal_why_not:
        print(f"\npg_walinspect unavailable ({results.wal_why_not}): server-wide WAL only")

    def cell(value: float | None) -> object:
        return "-" if value is None else round(value)

    rows: list[tuple[object, ...]] = []
    full: dict[int, Wal] = {}
    for (path, batch), phases in sorted(results.wal.items()):
        named = list(phases.items())
        if "register" in phases:
            total = phases["register"] + phases["cycle"]
            named.append(("full cycle", total))
            full[batch] = total
        for phase, wal in named:
            phase_name = "capture+release" if phase == "cycle" else phase
            rows.append(
                (
                    path,
                    batch,
                    phase_name,
                    wal.tasks,
                    cell(wal.per_task(wal.bytes)),
                    cell(wal.per_task(wal.fpi_bytes)),
                    "-" if wal.records is None else f"{wal.records / wal.tasks:.2f}",
                    cell(wal.per_task(wal.server_bytes)),
                    cell(None if wal.postgres_cpu is None else wal.postgres_cpu * 1e6 / wal.tasks),
                )
            )
    print_table(
        [
            "path",
            "B",
            "phase",
            "tasks",
            "WAL bytes/task (this db)",
            "of which full-page images",
            "records/task",
            "server WAL bytes/task (all dbs)",
            "postgres CPU µs/task",
        ],
        rows,
        title=(
            f"WAL per task, {args.wal_rounds} batches of B after a warm-up, one client "
            "(HTTP: through HAProxy, one app server); register: POST /v1/task"
        ),
    )
    managers = sorted({name for wal in full.values() for name in wal.by_manager})
    if managers:
        print_table(
            ["resource manager", *(f"B={b} bytes/task" for b in sorted(full))],
            [
                (name, *(cell(full[b].per_task(full[b].by_manager.get(name, 0))) for b in full))
                for name in managers
            ],
            title="The full cycle's WAL (HTTP) by resource manager (this database's records)",
        )
    sizing: list[tuple[object, ...]] = []
    for batch in args.batches:
        raw = [s for s in steps if s.servers == 0 and s.batch == batch]
        pg = sum(cores_of(s.cpu, PG_MINE) + cores_of(s.cpu, PG_BACKGROUND) for s in raw) / len(raw)
        whole = full.get(batch)
        per_task = None if whole is None else whole.per_task(whole.bytes or whole.server_bytes)
        sizing.append(
            (
                batch,
                round(limit[batch]),
                pg,
                round(limit[batch] / pg) if pg else "-",
                cell(per_task),
                "-" if per_task is None else limit[batch] * per_task / 1e6,
            )
        )
    print_table(
        [
            "B",
            "raw-SQL limit tasks/s",
            "postgres cores at it",
            "tasks/s per postgres core",
            "WAL bytes/task, full cycle",
            "WAL MB/s at the limit, full cycle",
        ],
        sizing,
        title="Sizing the primary (the raw-SQL steps' mean; WAL from the HTTP measurement)",
    )


if __name__ == "__main__":
    sys.exit(main())
