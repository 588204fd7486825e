"""Capture latency beside a million tasks delayed into the future, against none, in SQL alone.

    .venv/bin/python -m bench.delays [--delayed 1000000] [--rounds 500] [--limits 1 100]

On a database of its own (`taskq_delays`), four namespaces share the task
table:

- `ready`: R tasks whose turn has come, at priority 0, and nothing else
  (as many as the rounds capture, so no capture finds its queue short);
- `ready-delayed`: as many such tasks, and D tasks of the same priority
  delayed an hour into the future, which its one index range scan must end
  before;
- `ready-p5`: R tasks whose turn has come, at priority 5;
- `ready-p5-delayed-p0`: as many at priority 5, and D tasks at priority 0
  delayed: capture's scan of level 0 must end at its first entry and go on
  to the next level.

One connection runs the product's capture statement (limit L) in each
namespace in turn, round after round, and releases the tasks done (not
timed: no attempt is kept of a done one, so the history stays empty); only
the capture is timed. Each
delayed namespace is read against the namespace with the same ready tasks
and no delayed ones, measured in the same rounds. Then one capture in each
namespace under EXPLAIN (ANALYZE, BUFFERS), rolled back: the buffers its
picking of tasks (the per-level scans and their row locks) and the whole
statement touch, and the whole plan in the two delayed namespaces.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    LOAD_QUEUED_TASKS,
    LatencyPercentiles,
    add_database_arguments,
    argument_parser,
    bench_database,
    connect,
    database_url,
    machine_description,
    print_table,
    queued_tasks,
    settle,
    setup_django,
)

DATABASE = "taskq_delays"
# Delayed tasks wait an hour: far beyond every lease and round of the run.
DELAY_SECONDS = 3600.0


@dataclass(frozen=True)
class Queue:
    """A namespace: its ready tasks' priority, and whether D delayed tasks sit beside them."""

    namespace: str
    priority: int
    delayed_priority: int | None
    baseline: str | None  # the namespace it is read against

    @property
    def described(self) -> str:
        ready = f"ready at priority {self.priority}"
        if self.delayed_priority is None:
            return ready
        return f"{ready}, delayed at priority {self.delayed_priority}"


QUEUES = (
    Queue("ready", 0, None, None),
    Queue("ready-delayed", 0, 0, "ready"),
    Queue("ready-p5", 5, None, None),
    Queue("ready-p5-delayed-p0", 5, 0, "ready-p5"),
)


@dataclass
class Timings(LatencyPercentiles):
    latencies: list[float] = field(default_factory=list)


def load(conn: Any, args: Any, ready: int) -> None:
    from tasks_app.lease import PRIORITIES

    assert all(q.priority in PRIORITIES for q in QUEUES)
    for queue in QUEUES:
        conn.execute("INSERT INTO namespaces_app_namespace (id) VALUES (%s)", [queue.namespace])
        conn.execute(
            LOAD_QUEUED_TASKS,
            queued_tasks(
                queue.namespace,
                ready,
                prefix=f"{queue.namespace}/ready-",
                priority=queue.priority,
            ),
        )
        if queue.delayed_priority is not None:
            conn.execute(
                LOAD_QUEUED_TASKS,
                queued_tasks(
                    queue.namespace,
                    args.delayed,
                    prefix=f"{queue.namespace}/delayed-",
                    priority=queue.delayed_priority,
                    after=DELAY_SECONDS,
                ),
            )


def capture(conn: Any, queue: Queue, limit: int) -> tuple[float, list[Any]]:
    """One capture in `queue`, timed, and its rows, checked: `limit` ready tasks."""
    from tasks_app import lease

    began = time.perf_counter()
    rows = conn.execute(lease.CAPTURE, lease.capture_params(queue.namespace, limit)).fetchall()
    took = time.perf_counter() - began
    priority = lease.TASK_COLUMNS.split(", ").index("priority")
    if len(rows) != limit or any(row[priority] != queue.priority for row in rows):
        raise SystemExit(f"capture in {queue.namespace} did not lease {limit} ready tasks")
    return took, rows


def finish(conn: Any, rows: list[Any]) -> None:
    from tasks_app import lease

    ids = [row[0] for row in rows]
    tokens = [row[lease.CAPTURED_TOKEN] for row in rows]
    released = conn.execute(lease.RELEASE, lease.release_params(ids, tokens, "done")).fetchall()
    assert all(row[0] is None for row in released), "a release was refused"


def measure(conn: Any, limit: int, rounds: int, warm_ups: int) -> dict[str, Timings]:
    timings = {queue.namespace: Timings() for queue in QUEUES}
    for round_number in range(warm_ups + rounds):
        # Rotate which namespace goes first, so none always follows another.
        for i in range(len(QUEUES)):
            queue = QUEUES[(round_number + i) % len(QUEUES)]
            took, rows = capture(conn, queue, limit)
            if round_number >= warm_ups:
                timings[queue.namespace].latencies.append(took)
            finish(conn, rows)
    return timings


def explain(conn: Any, queue: Queue, limit: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of one capture in `queue`, rolled back."""
    from tasks_app import lease

    with conn.transaction(force_rollback=True):
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + lease.CAPTURE,
            lease.capture_params(queue.namespace, limit),
        ).fetchall()
    return "\n".join(row[0] for row in plan)


_BUFFERS = re.compile(r"Buffers: shared hit=(\d+)(?: read=(\d+))?")


def pages(plan: str, after: str = "") -> int:
    """The shared buffers (hit or read) of the first node after the line `after` (the
    plan's top node by default), its children's included."""
    start = plan.index(after) if after else 0
    match = _BUFFERS.search(plan, start)
    return int(match.group(1)) + int(match.group(2) or 0) if match else -1


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser("bench.delays", __doc__)
    add_database_arguments(parser, DATABASE)
    parser.add_argument("--delayed", type=int, default=1_000_000, help="D, per delayed namespace.")
    parser.add_argument("--rounds", type=int, default=500, help="Captures per namespace and limit.")
    parser.add_argument("--warm-ups", type=int, default=20, help="Untimed rounds first.")
    parser.add_argument("--limits", type=int, nargs="+", default=[1, 100])
    args = parser.parse_args(argv)
    # Each capture takes its tasks for good (they are released done), and the
    # EXPLAIN after each limit's rounds leases some (rolled back).
    ready = (args.warm_ups + args.rounds) * sum(args.limits) + max(args.limits)
    setup_django()

    with bench_database(args.db_name, keep=args.keep):
        print_table(["", ""], machine_description(), title="Machine")
        url = database_url()
        rows = []
        plans = []
        with connect(url) as conn:
            started = time.monotonic()
            load(conn, args, ready)
            settle()
            print(f"loaded in {time.monotonic() - started:.1f} s", flush=True)
            for limit in args.limits:
                timings = measure(conn, limit, args.rounds, args.warm_ups)
                for queue in QUEUES:
                    plan = explain(conn, queue, limit)
                    if queue.delayed_priority is not None and limit == max(args.limits):
                        plans.append((queue, limit, plan))
                    own = timings[queue.namespace]
                    base = timings[queue.baseline] if queue.baseline else None
                    rows.append(
                        (
                            queue.namespace,
                            queue.described,
                            f"{args.delayed:,}" if queue.delayed_priority is not None else "0",
                            limit,
                            own.p50_ms,
                            own.p99_ms,
                            f"{own.p50_ms / base.p50_ms:.2f}" if base else "-",
                            f"{own.p99_ms / base.p99_ms:.2f}" if base else "-",
                            pages(plan, "CTE picked"),
                            pages(plan),
                        )
                    )
                # The next limit starts from tables as vacuumed as this one's did.
                settle()
        print_table(
            [
                "namespace",
                "tasks",
                "delayed",
                "limit",
                "p50 ms",
                "p99 ms",
                "p50 / baseline",
                "p99 / baseline",
                "buffers: picking",
                "buffers: whole capture",
            ],
            rows,
            title=(
                f"The capture statement, {args.rounds} captures per namespace and limit, "
                f"taking turns; {ready:,} ready tasks per namespace at the start"
            ),
        )
        for queue, limit, plan in plans:
            print(
                f"\nEXPLAIN (ANALYZE, BUFFERS) of a capture in {queue.namespace}, limit {limit}\n"
            )
            print("```\n" + plan + "\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
