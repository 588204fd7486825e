"""Throughput of the capture/release loop over HTTP, against the raw-SQL limit.

Run from the repository root (`make bench` runs it with the defaults):

    .venv/bin/python -m bench.throughput [--seconds 8] [--growth-rows 5000000]
        [--history failures all] [--release-as done|failed] [--payload-bytes 0 1024]

In one run, on one database of its own (`taskq_throughput`, or `--db-name`):

1. The matrix. For each batch size B in {1, 10, 100} and number of workers K
   in {4, 16}: K load-generating processes loop capture(limit=B) then
   release(done) against gunicorn, configured as `make run` serves the API,
   over keep-alive connections, for S seconds; then the same work straight in
   SQL (the product's own capture and release statements, over psycopg) from
   K processes for S seconds. Each side starts from the same freshly loaded,
   vacuumed table. The figure that matters is the ratio HTTP / SQL.
   `--release leases` (the default) releases with the lease tokens capture
   gave (`{"leases": [{"id", "lease_token"}]}`), `--release ids` with the
   seed's `task_ids`; `--release both` measures the two side by side, so the
   cost of the fence is read off one run.
   `--history` sets what the namespace keeps of ended attempts (`failures`,
   the product's default, or `all`, which writes an attempt row for every
   done release too; `--history failures all` measures the two side by
   side); `--release-as failed` releases every task failed, so each release
   writes its attempts whatever the history. `--payload-bytes 0 1024` runs
   the matrix once with tasks that carry no payload and once with a 1 KiB
   JSON payload each (which capture returns), side by side.
2. Table growth: capture p99 over HTTP with 10,000 tasks in the table, then
   with 5,000,000 (all but those 10,000 done). Here workers hand tasks back
   (release idle) so the table stays the size it is meant to be.

The load generators, gunicorn and PostgreSQL share the machine's cores, as
the issue's targets assume.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

from bench.common import (
    LOAD_DONE_TASKS,
    LOAD_QUEUED_TASKS,
    LatencyPercentiles,
    Server,
    add_database_arguments,
    argument_parser,
    bench_database,
    connect,
    database_url,
    jsonb_as_text,
    machine_description,
    print_table,
    queued_tasks,
    settle,
    setup_django,
    verdict,
)

DATABASE = "taskq_throughput"
NAMESPACE = "bench"
BATCHES = (1, 10, 100)
WORKERS = (4, 16)
# Targets from the issue.
TARGET_RATIO = {100: 0.5, 1: 0.3}
TARGET_GROWTH = 1.5


@dataclass
class WorkerResult:
    tasks: int = 0
    latencies: list[float] = field(default_factory=list)
    ran_dry: bool = False
    # When the worker began its loop (time.time()): later than the start
    # when spawning and importing took longer than the delay given them.
    began: float = 0.0


@dataclass
class Run(LatencyPercentiles):
    tasks: int
    seconds: float
    latencies: list[float]
    ran_dry: bool
    # Seconds after the start that the last worker began its loop.
    late: float = 0.0

    @property
    def per_second(self) -> float:
        return self.tasks / self.seconds


# --- The load generators (run in their own processes) ---------------------------------


def http_worker(
    port: int,
    token: str,
    batch: int,
    release_as: str,
    form: str,
    with_payload: bool,
    start: float,
    seconds: float,
) -> WorkerResult:
    import orjson

    result = WorkerResult()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    capture_path = f"/v1/task/capture?namespace_id={NAMESPACE}&limit={batch}"
    time.sleep(max(0.0, start - time.time()))
    result.began = time.time()
    deadline = start + seconds
    while time.time() < deadline:
        began = time.perf_counter()
        conn.request("GET", capture_path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        result.latencies.append(time.perf_counter() - began)
        if response.status != 200:
            raise RuntimeError(f"capture answered {response.status}: {body[:200]!r}")
        tasks = orjson.loads(body)["list"]
        if not tasks:
            result.ran_dry = True
            break
        if with_payload and tasks[0]["payload"] is None:
            raise RuntimeError("capture answered a task without its payload")
        if form == "leases":
            release = {
                "status": release_as,
                "leases": [{"id": t["id"], "lease_token": t["lease_token"]} for t in tasks],
            }
        else:
            release = {"status": release_as, "task_ids": [t["id"] for t in tasks]}
        conn.request("PUT", "/v1/task/release", body=orjson.dumps(release), headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"release answered {response.status}")
        result.tasks += len(tasks)
    conn.close()
    return result


def sql_worker(
    conninfo: str,
    batch: int,
    release_as: str,
    form: str,
    with_payload: bool,
    start: float,
    seconds: float,
) -> WorkerResult:
    from tasks_app import lease

    result = WorkerResult()
    with connect(conninfo) as conn:
        jsonb_as_text(conn)
        time.sleep(max(0.0, start - time.time()))
        result.began = time.time()
        deadline = start + seconds
        while time.time() < deadline:
            began = time.perf_counter()
            rows = conn.execute(lease.CAPTURE, lease.capture_params(NAMESPACE, batch)).fetchall()
            result.latencies.append(time.perf_counter() - began)
            ids = [row[0] for row in rows]
            if not ids:
                result.ran_dry = True
                break
            # The token follows the task's columns, and the payload the token.
            if with_payload and rows[0][lease.CAPTURED_TOKEN + 1] is None:
                raise RuntimeError("capture returned a task without its payload")
            tokens = [row[lease.CAPTURED_TOKEN] for row in rows] if form == "leases" else None
            conn.execute(lease.RELEASE, lease.release_params(ids, tokens, release_as)).fetchall()
            result.tasks += len(ids)
    return result


def run_workers(
    target: Any, args: tuple[Any, ...], workers: int, seconds: float, *, start: float | None = None
) -> Run:
    # Start together, two seconds from now (or at `start`, time.time()'s clock,
    # for a caller that watches the same window): every process is up and
    # connected before the clock starts.
    if start is None:
        start = time.time() + 2.0
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        results = pool.starmap(target, [(*args, start, seconds) for _ in range(workers)])
    latencies = [value for result in results for value in result.latencies]
    return Run(
        tasks=sum(result.tasks for result in results),
        seconds=seconds,
        latencies=latencies,
        ran_dry=any(result.ran_dry for result in results),
        late=max(result.began for result in results) - start,
    )


# --- The table ------------------------------------------------------------------------------


def reset_table(*, idle: int, done: int = 0, payload_bytes: int = 0) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        # The attempts go with their tasks (ON DELETE CASCADE).
        cursor.execute("TRUNCATE tasks_app_task, tasks_app_throughput CASCADE")
        if done:
            cursor.execute(LOAD_DONE_TASKS, {"namespace_id": NAMESPACE, "rows": done})
        cursor.execute(
            LOAD_QUEUED_TASKS, queued_tasks(NAMESPACE, idle, payload_bytes=payload_bytes)
        )
    settle()


# --- The run --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser("bench.throughput", __doc__)
    add_database_arguments(parser, DATABASE)
    parser.add_argument("--seconds", type=float, default=8.0, help="Per measurement.")
    parser.add_argument("--growth-rows", type=int, default=5_000_000)
    parser.add_argument("--skip-growth", action="store_true")
    parser.add_argument(
        "--release",
        choices=["leases", "ids", "both"],
        default="leases",
        help="Release with lease tokens (fenced), with task_ids (the seed's form), or both.",
    )
    parser.add_argument(
        "--batches", type=int, nargs="+", default=list(BATCHES), help="Batch sizes to run."
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=list(WORKERS), help="Worker counts to run."
    )
    parser.add_argument(
        "--history",
        choices=["failures", "all"],
        nargs="+",
        default=["failures"],
        help="The namespace's attempt history: failures only (the default) or every attempt;"
        " both run the matrix with each, side by side.",
    )
    parser.add_argument(
        "--release-as",
        choices=["done", "failed"],
        default="done",
        help="The status workers release their tasks with.",
    )
    parser.add_argument(
        "--payload-bytes",
        type=int,
        nargs="+",
        default=[0],
        help="Payload sizes (bytes of JSON per task, 0: none) to run the matrix with.",
    )
    args = parser.parse_args(argv)
    if any(0 < size < 12 for size in args.payload_bytes):
        parser.error("a payload is at least 12 bytes of JSON (or 0: none)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django()
    from apikeys_app.services import create_token
    from namespaces_app.services import register_namespace

    with bench_database(args.db_name, keep=args.keep):
        print_table(["", ""], machine_description(), title="Machine")
        register_namespace(namespace_id=NAMESPACE)
        _, token = create_token(name="bench", role="worker")
        url = database_url()
        server = Server()
        try:
            matrix = run_matrix(args, server, token, url)
            growth = None if args.skip_growth else run_growth(args, server, token)
        finally:
            server.stop()
    return report(matrix, growth, args)


def enough_tasks(batch: int, workers: int, seconds: float) -> int:
    # Generous upper bounds of what each side can finish in `seconds`, so no
    # run drains the queue (a drained run is flagged, not silently short).
    per_second = {1: 8_000, 10: 40_000, 100: 90_000}[batch]
    return int(per_second * seconds * 1.5) + workers * batch


def release_forms(args: argparse.Namespace) -> list[str]:
    return ["ids", "leases"] if args.release == "both" else [args.release]


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix: how the workers ran, and the HTTP and SQL runs."""

    batch: int
    workers: int
    form: str
    history: str
    payload: int
    http: Run
    sql: Run

    @property
    def key(self) -> tuple[int, int, str, str, int]:
        return (self.batch, self.workers, self.form, self.history, self.payload)


def run_matrix(args: argparse.Namespace, server: Server, token: str, url: str) -> list[Cell]:
    from namespaces_app.services import Settings, change_namespace

    cells = []
    for batch in args.batches:
        for workers in args.workers:
            for form in release_forms(args):
                for history in args.history:
                    change_namespace(namespace_id=NAMESPACE, settings=Settings(history=history))
                    for size in args.payload_bytes:
                        tasks = enough_tasks(batch, workers, args.seconds)
                        common = (batch, args.release_as, form, size > 0)
                        reset_table(idle=tasks, payload_bytes=size)
                        http_run = run_workers(
                            http_worker, (server.port, token, *common), workers, args.seconds
                        )
                        reset_table(idle=tasks, payload_bytes=size)
                        sql_run = run_workers(sql_worker, (url, *common), workers, args.seconds)
                        cells.append(Cell(batch, workers, form, history, size, http_run, sql_run))
                        print(
                            f"B={batch:<3} K={workers:<2} {form:<6} history {history:<8} "
                            f"payload {size:<5} http {http_run.per_second:>9,.0f}/s "
                            f"sql {sql_run.per_second:>9,.0f}/s "
                            f"ratio {http_run.per_second / sql_run.per_second:.2f}",
                            flush=True,
                        )
    return cells


def run_growth(args: argparse.Namespace, server: Server, token: str) -> tuple[Run, Run]:
    reset_table(idle=10_000)
    form = release_forms(args)[-1]
    common = (server.port, token, 10, "idle", form, False)
    small = run_workers(http_worker, common, 4, args.seconds)
    reset_table(idle=10_000, done=args.growth_rows - 10_000)
    large = run_workers(http_worker, common, 4, args.seconds)
    return small, large


# The fields of a cell that a run may vary, and their column headers.
VARIED = {"form": "release", "history": "history", "payload": "payload bytes"}


def print_variants(
    matrix: list[Cell], field: str, variant: Any, baseline: Any, label: str, title: str
) -> None:
    """Tasks/s of each cell run with `variant` (of `field`) over the cell of the same
    run that differs only by `baseline`, on each side."""
    by_key = {cell.key: cell for cell in matrix}
    # The other fields this run varies tell the rows apart.
    shown = [
        name
        for name in VARIED
        if name != field and len({getattr(cell, name) for cell in matrix}) > 1
    ]
    rows = []
    for cell in matrix:
        if getattr(cell, field) != variant:
            continue
        base = by_key[replace(cell, **{field: baseline}).key]
        rows.append(
            (
                cell.batch,
                cell.workers,
                *(getattr(cell, name) for name in shown),
                f"{cell.http.per_second / base.http.per_second:.2f}",
                f"{cell.sql.per_second / base.sql.per_second:.2f}",
            )
        )
    print_table(
        ["B", "K", *(VARIED[name] for name in shown), f"HTTP {label}", f"SQL {label}"],
        rows,
        title=title,
    )


def report(matrix: list[Cell], growth: tuple[Run, Run] | None, args: argparse.Namespace) -> int:
    histories = len(args.history) > 1
    payloads = args.payload_bytes != [0]
    title = f"Capture + release {args.release_as}, {args.seconds:g} s per measurement"
    if not histories:
        title += f", history '{args.history[0]}'"
    print_table(
        [
            "B",
            "K",
            "release",
            *(["history"] if histories else []),
            *(["payload bytes"] if payloads else []),
            "HTTP tasks/s",
            "SQL tasks/s",
            "HTTP / SQL",
            "HTTP capture p50 ms",
            "HTTP capture p99 ms",
            "SQL capture p50 ms",
            "SQL capture p99 ms",
        ],
        [
            (
                c.batch,
                c.workers,
                c.form,
                *([c.history] if histories else []),
                *([c.payload] if payloads else []),
                round(c.http.per_second),
                round(c.sql.per_second),
                f"{c.http.per_second / c.sql.per_second:.2f}"
                + (" (drained)" if c.http.ran_dry or c.sql.ran_dry else ""),
                c.http.p50_ms,
                c.http.p99_ms,
                c.sql.p50_ms,
                c.sql.p99_ms,
            )
            for c in matrix
        ],
        title=title,
    )
    verdicts = []
    for batch, target in TARGET_RATIO.items():
        ratios = [c.http.per_second / c.sql.per_second for c in matrix if c.batch == batch]
        if not ratios:
            continue
        best = max(ratios)
        verdicts.append(
            (
                f"B={batch}: HTTP at least {target}x SQL",
                f"best {best:.2f}x",
                verdict(best >= target),
            )
        )
    if growth is not None:
        small, large = growth
        ratio = large.p99_ms / small.p99_ms
        print_table(
            ["tasks in the table", "capture p50 ms", "capture p99 ms", "tasks/s"],
            [
                ("10,000", small.p50_ms, small.p99_ms, round(small.per_second)),
                (
                    f"{args.growth_rows:,} (all but 10,000 done)",
                    large.p50_ms,
                    large.p99_ms,
                    round(large.per_second),
                ),
            ],
            title="Table growth (HTTP, B=10, K=4, tasks handed back idle)",
        )
        verdicts.append(
            (
                f"capture p99 at {args.growth_rows:,} at most {TARGET_GROWTH}x at 10,000",
                f"{ratio:.2f}x",
                verdict(ratio <= TARGET_GROWTH),
            )
        )
    # Each variant against its baseline, each side of the same run.
    if args.release == "both":
        print_variants(
            matrix,
            "form",
            "leases",
            "ids",
            "leases / ids",
            "Fenced release against the seed's release",
        )
    if "all" in args.history and "failures" in args.history:
        print_variants(
            matrix,
            "history",
            "all",
            "failures",
            "all / failures",
            "History of every attempt against failures only",
        )
    if 0 in args.payload_bytes:
        for size in args.payload_bytes:
            if size:
                print_variants(
                    matrix,
                    "payload",
                    size,
                    0,
                    "payload / none",
                    "Tasks with a payload against tasks without",
                )
    print_table(["target", "measured", "verdict"], verdicts, title="Targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
