"""Capture latency under sustained churn: does a busy namespace's capture stay fast?

Run from the repository root:

    .venv/bin/python -m bench.churn [--seconds 60] [--tasks 50000]
        [--done-tasks 1000000] [--default-vacuum]

The table also holds `--done-tasks` done tasks of another namespace, as a
table that keeps its history does: the larger the table, the later
PostgreSQL's default thresholds (20% of its rows) call for a vacuum.
One worker loops `capture_tasks(limit=10)` then `release_tasks(..., "idle")`
over a namespace of idle tasks, as fast as it can, in a database of its own
(`taskq_churn`, dropped at the end). Every capture and release leaves the
task's previous entry in `task_capture_idx` at the head of the namespace's
range, where the next capture starts its scan, until a vacuum removes it.

It prints, per window of `--window` seconds, the capture p50 and p99, how many
index and heap pages one capture's range scan reads (EXPLAIN ANALYZE of the
scan, between windows) and how many autovacuums the task table has had. The
figure that counts is a ratio within the run: the slowest window's p99 over
the first's. `--default-vacuum` resets the task table's autovacuum settings
(migration 0006) to PostgreSQL's defaults first, for the comparison.
The server's `autovacuum_naptime` is the server's own (10 s on the embedded
server).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence

from bench.common import (
    LOAD_DONE_TASKS,
    LOAD_IDLE_TASKS,
    argument_parser,
    bench_database,
    machine_description,
    percentile,
    print_table,
    setup_django,
)

BENCH_DB = "taskq_churn"
NAMESPACE = "bench-churn"
HISTORY_NAMESPACE = "bench-history"
CAPTURE_LIMIT = 10


# The capture's own range scan (lease.CAPTURE's CTE without the row locks).
SCAN = """
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT id FROM tasks_app_task
WHERE namespace_id = %s AND available_at <= statement_timestamp()
ORDER BY available_at LIMIT 10
"""


def scan_buffers() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(SCAN, [NAMESPACE])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    match = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)
    return int(match.group(1)) + int(match.group(2) or 0) if match else -1


def vacuums() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'tasks_app_task'"
        )
        (count,) = cursor.fetchone()  # type: ignore[misc]
    return int(count)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser("bench.churn", __doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--done-tasks", type=int, default=1_000_000)
    parser.add_argument(
        "--default-vacuum",
        action="store_true",
        help="reset the task table's autovacuum settings to PostgreSQL's defaults",
    )
    args = parser.parse_args(argv)
    setup_django()
    from django.db import connection

    from namespaces_app.models import Namespace
    from tasks_app.services import capture_tasks, release_tasks

    with bench_database(BENCH_DB):
        for name, value in machine_description():
            print(f"{name}: {value}")
        with connection.cursor() as cursor:
            cursor.execute("SHOW autovacuum_naptime")
            (naptime,) = cursor.fetchone()  # type: ignore[misc]
            if args.default_vacuum:
                cursor.execute(
                    "ALTER TABLE tasks_app_task RESET (autovacuum_vacuum_scale_factor, "
                    "autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor, "
                    "vacuum_index_cleanup)"
                )
            cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'tasks_app_task'")
            (options,) = cursor.fetchone()  # type: ignore[misc]
            Namespace.objects.create(id=NAMESPACE)
            Namespace.objects.create(id=HISTORY_NAMESPACE)
            cursor.execute(
                LOAD_DONE_TASKS, {"namespace_id": HISTORY_NAMESPACE, "rows": args.done_tasks}
            )
            cursor.execute(LOAD_IDLE_TASKS, {"namespace_id": NAMESPACE, "rows": args.tasks})
            cursor.execute("VACUUM ANALYZE tasks_app_task")
        print(
            f"task table options: {options or 'PostgreSQL defaults'}; autovacuum_naptime {naptime}"
        )
        print(f"{args.done_tasks:,} done tasks in another namespace")
        print(f"{args.tasks:,} idle tasks; one worker captures 10 and releases them, in a loop")

        rows: list[list[object]] = []
        first_vacuums = vacuums()
        ends = time.monotonic() + args.seconds
        started = time.monotonic()
        while time.monotonic() < ends:
            buffers = scan_buffers()
            took: list[float] = []
            window_ends = min(ends, time.monotonic() + args.window)
            while time.monotonic() < window_ends:
                t0 = time.monotonic()
                leased = capture_tasks(namespace_id=NAMESPACE, limit=CAPTURE_LIMIT)
                took.append(time.monotonic() - t0)
                release_tasks(task_ids=[task.id for task in leased], status="idle")
            rows.append(
                [
                    f"{window_ends - args.window - started:.0f}-{window_ends - started:.0f} s",
                    len(took),
                    percentile(took, 50) * 1000,
                    percentile(took, 99) * 1000,
                    buffers,
                    vacuums() - first_vacuums,
                ]
            )
        print_table(
            [
                "window",
                "captures",
                "p50 ms",
                "p99 ms",
                "pages read by the capture scan at its start",
                "autovacuums so far",
            ],
            rows,
        )
        p99s = [float(row[3]) for row in rows]  # type: ignore[arg-type]
        print(f"\ncapture p99, slowest window / first window: {max(p99s) / p99s[0]:.2f}")
        print(f"capture p99, last window / first window: {p99s[-1] / p99s[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
