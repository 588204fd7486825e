"""Throughput of the capture/release loop over HTTP, against the raw-SQL limit.

Run from the repository root (`make bench` runs it with the defaults):

    .venv/bin/python -m bench.throughput [--seconds 8] [--growth-rows 5000000]

In one run, on one database of its own (`taskq_throughput`):

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
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    LOAD_DONE_TASKS,
    LOAD_IDLE_TASKS,
    LatencyPercentiles,
    Server,
    argument_parser,
    bench_database,
    connect,
    database_url,
    machine_description,
    print_table,
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


@dataclass
class Run(LatencyPercentiles):
    tasks: int
    seconds: float
    latencies: list[float]
    ran_dry: bool

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
    start: float,
    seconds: float,
) -> WorkerResult:
    import orjson

    result = WorkerResult()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    capture_path = f"/v1/task/capture?namespace_id={NAMESPACE}&limit={batch}"
    time.sleep(max(0.0, start - time.time()))
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
    conninfo: str, batch: int, release_as: str, form: str, start: float, seconds: float
) -> WorkerResult:
    from tasks_app import lease

    result = WorkerResult()
    with connect(conninfo) as conn:
        time.sleep(max(0.0, start - time.time()))
        deadline = start + seconds
        while time.time() < deadline:
            began = time.perf_counter()
            rows = conn.execute(lease.CAPTURE, lease.capture_params(NAMESPACE, batch)).fetchall()
            result.latencies.append(time.perf_counter() - began)
            ids = [row[0] for row in rows]
            if not ids:
                result.ran_dry = True
                break
            # The token is the last column capture returns.
            tokens = [row[lease.CAPTURED_TOKEN] for row in rows] if form == "leases" else None
            conn.execute(lease.RELEASE, lease.release_params(ids, tokens, release_as)).fetchall()
            result.tasks += len(ids)
    return result


def run_workers(target: Any, args: tuple[Any, ...], workers: int, seconds: float) -> Run:
    # Start together, two seconds from now: every process is up and connected
    # before the clock starts.
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
    )


# --- The table ------------------------------------------------------------------------------


def reset_table(*, idle: int, done: int = 0) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE tasks_app_task, tasks_app_throughput CASCADE")
        if done:
            cursor.execute(LOAD_DONE_TASKS, {"namespace_id": NAMESPACE, "rows": done})
        cursor.execute(LOAD_IDLE_TASKS, {"namespace_id": NAMESPACE, "rows": idle})
    settle()


# --- The run --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser("bench.throughput", __doc__)
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django()
    from apikeys_app.services import create_token
    from namespaces_app.services import register_namespace

    with bench_database(DATABASE):
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


def run_matrix(
    args: argparse.Namespace, server: Server, token: str, url: str
) -> list[tuple[int, int, str, Run, Run]]:
    rows = []
    for batch in args.batches:
        for workers in args.workers:
            for form in release_forms(args):
                tasks = enough_tasks(batch, workers, args.seconds)
                reset_table(idle=tasks)
                http_run = run_workers(
                    http_worker, (server.port, token, batch, "done", form), workers, args.seconds
                )
                reset_table(idle=tasks)
                sql_run = run_workers(sql_worker, (url, batch, "done", form), workers, args.seconds)
                rows.append((batch, workers, form, http_run, sql_run))
                print(
                    f"B={batch:<3} K={workers:<2} {form:<6} http {http_run.per_second:>9,.0f}/s "
                    f"sql {sql_run.per_second:>9,.0f}/s "
                    f"ratio {http_run.per_second / sql_run.per_second:.2f}",
                    flush=True,
                )
    return rows


def run_growth(args: argparse.Namespace, server: Server, token: str) -> tuple[Run, Run]:
    reset_table(idle=10_000)
    form = release_forms(args)[-1]
    small = run_workers(http_worker, (server.port, token, 10, "idle", form), 4, args.seconds)
    reset_table(idle=10_000, done=args.growth_rows - 10_000)
    large = run_workers(http_worker, (server.port, token, 10, "idle", form), 4, args.seconds)
    return small, large


def report(
    matrix: list[tuple[int, int, str, Run, Run]],
    growth: tuple[Run, Run] | None,
    args: argparse.Namespace,
) -> int:
    print_table(
        [
            "B",
            "K",
            "release",
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
                batch,
                workers,
                form,
                round(h.per_second),
                round(s.per_second),
                f"{h.per_second / s.per_second:.2f}"
                + (" (drained)" if h.ran_dry or s.ran_dry else ""),
                h.p50_ms,
                h.p99_ms,
                s.p50_ms,
                s.p99_ms,
            )
            for batch, workers, form, h, s in matrix
        ],
        title=f"Capture + release, {args.seconds:g} s per measurement",
    )
    verdicts = []
    for batch, target in TARGET_RATIO.items():
        ratios = [h.per_second / s.per_second for b, _, _, h, s in matrix if b == batch]
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
    if args.release == "both":
        # The fence's cost: fenced over unfenced tasks/s, each side of the same run.
        by_key = {(b, k, f): (h, s) for b, k, f, h, s in matrix}

        def fence_cost(b: int, k: int, side: int) -> str:
            fenced, seed = by_key[b, k, "leases"][side], by_key[b, k, "ids"][side]
            return f"{fenced.per_second / seed.per_second:.2f}"

        print_table(
            ["B", "K", "HTTP leases / ids", "SQL leases / ids"],
            [
                (b, k, fence_cost(b, k, 0), fence_cost(b, k, 1))
                for b, k, f, _, _ in matrix
                if f == "ids"
            ],
            title="Fenced release against the seed's release",
        )
    print_table(["target", "measured", "verdict"], verdicts, title="Targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
