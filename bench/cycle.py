"""What a capture and release cost in SQL: the attempt history and payloads, against the code
before them.

    .venv/bin/python -m bench.cycle [--rounds 300] [--batches 1 100]
        [--base-checkout /tmp/taskq-base] [--payload-bytes 1024] [--history-rows 100000]

One connection per database, no HTTP: each round captures B tasks with a
capture statement and releases them with the matching release statement,
and times both. The forms take turns round by round, so drift in the
machine's load falls on all of them alike:

- `base` (with `--base-checkout`): the statements of another checkout (a
  `git worktree` of the commit before the history, say), on a database of
  their own that the checkout's own migrations built, releasing `done`;
- `failures`: today's statements in a namespace that keeps failed attempts
  only (the default), releasing `done`: no attempt row is written;
- `all`: the same in a namespace that keeps every attempt, so each done
  release writes B attempt rows;
- `failed`: today's statements releasing the tasks `failed` (retried, so
  capturable again), which writes B attempt rows whatever the history;
- `payload`: as `failures`, with tasks that carry a JSON payload of
  `--payload-bytes` each (1 KiB), which capture returns (read as text, as
  Django reads jsonb: the product decodes it itself).

The figures are medians of the capture, the release and the two together
(the cycle), and the cycle's ratios to `base` and to `failures`.

Beside the forms' namespaces, each database holds H done tasks
(`--history-rows`) and, today's, an attempt of each: the history a live
table keeps, which the planner sees when it plans today's statements. With
`--history-rows 0` the attempt table is empty when the statements are
planned, as right after the migration that created it.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common import (
    LOAD_DONE_TASKS,
    LOAD_IDLE_TASKS,
    LOAD_QUEUED_TASKS,
    add_database_arguments,
    argument_parser,
    bench_database,
    checkout_database,
    connect,
    database_url,
    jsonb_as_text,
    machine_description,
    percentile,
    print_table,
    queued_tasks,
    setup_django,
)

DATABASE = "taskq_cycle"
BASE_DATABASE = "taskq_cycle_base"
# Today's forms: the history of the namespace each captures from, the status
# it releases, and whether its tasks carry a payload.
FORMS = {
    "failures": ("failures", "done", False),
    "all": ("all", "done", False),
    "failed": ("failures", "failed", False),
    "payload": ("failures", "done", True),
}
# Where the earlier work's done tasks, and their attempts, lie.
HISTORY_NAMESPACE = "history"

# One done attempt for each task of a namespace. Parameters: namespace_id.
LOAD_ATTEMPTS = """
INSERT INTO tasks_app_attempt (task_id, attempt, captured_at, ended_at, outcome)
SELECT id, 1, updated_at - interval '1 minute', updated_at, 'done'
FROM tasks_app_task
WHERE namespace_id = %(namespace_id)s
"""


def checkout_lease(checkout: Path) -> ModuleType:
    """The other checkout's tasks_app/lease.py (it imports only Django), as a module of its own."""
    spec = importlib.util.spec_from_file_location("base_lease", checkout / "tasks_app" / "lease.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkout_commit(checkout: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


class Form:
    """One form: a connection, its statements, its namespace and how it releases."""

    def __init__(self, conn: Any, lease: ModuleType, namespace: str, status: str) -> None:
        self.conn = conn
        self.lease = lease
        self.namespace = namespace
        self.status = status
        self.capture_ms: list[float] = []
        self.release_ms: list[float] = []

    def cycle(self, batch: int, *, timed: bool) -> None:
        lease = self.lease
        # Before the history, the statements took their parameters as plain
        # dicts, and the token was the last column capture returned.
        if hasattr(lease, "capture_params"):
            capture = lease.capture_params(self.namespace, batch)
        else:
            capture = {"namespace_id": self.namespace, "limit": batch}
        began = time.perf_counter()
        rows = self.conn.execute(lease.CAPTURE, capture).fetchall()
        captured = time.perf_counter()
        if len(rows) != batch:
            raise SystemExit(f"capture in {self.namespace} leased {len(rows)} of {batch}")
        ids = [row[0] for row in rows]
        if hasattr(lease, "release_params"):
            tokens = [row[lease.CAPTURED_TOKEN] for row in rows]
            release = lease.release_params(ids, tokens, self.status)
        else:
            tokens = [row[-1] for row in rows]
            release = {"ids": ids, "tokens": tokens, "status": self.status, "scope": None}
        released_at = time.perf_counter()
        released = self.conn.execute(lease.RELEASE, release).fetchall()
        ended = time.perf_counter()
        if len(released) != batch or any(row[0] is not None for row in released):
            raise SystemExit(f"release in {self.namespace} refused some of its {batch} leases")
        if timed:
            self.capture_ms.append((captured - began) * 1000)
            self.release_ms.append((ended - released_at) * 1000)

    @property
    def cycle_ms(self) -> list[float]:
        return [c + r for c, r in zip(self.capture_ms, self.release_ms, strict=True)]


def load_done(conn: Any, history_rows: int) -> None:
    conn.execute("INSERT INTO namespaces_app_namespace (id) VALUES (%s)", [HISTORY_NAMESPACE])
    conn.execute(LOAD_DONE_TASKS, {"namespace_id": HISTORY_NAMESPACE, "rows": history_rows})


def load_today(conn: Any, rows: int, history_rows: int, payload_bytes: int) -> None:
    for name, (history, _, payload) in FORMS.items():
        conn.execute(
            "INSERT INTO namespaces_app_namespace (id, history) VALUES (%s, %s)", [name, history]
        )
        conn.execute(
            LOAD_QUEUED_TASKS,
            queued_tasks(
                name, rows, prefix=f"{name}-", payload_bytes=payload_bytes if payload else 0
            ),
        )
    if history_rows:
        load_done(conn, history_rows)
        conn.execute(LOAD_ATTEMPTS, {"namespace_id": HISTORY_NAMESPACE})
    conn.execute("VACUUM ANALYZE")


def load_base(conn: Any, rows: int, history_rows: int) -> None:
    # The earlier schema's own columns only: LOAD_IDLE_TASKS and
    # LOAD_DONE_TASKS name no column the history added.
    conn.execute("INSERT INTO namespaces_app_namespace (id) VALUES ('base')")
    conn.execute(LOAD_IDLE_TASKS, {"namespace_id": "base", "rows": rows})
    if history_rows:
        load_done(conn, history_rows)
    conn.execute("VACUUM ANALYZE")


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser("bench.cycle", __doc__)
    add_database_arguments(parser, DATABASE)
    parser.add_argument("--rounds", type=int, default=300, help="Timed cycles per form and batch.")
    parser.add_argument("--warm-ups", type=int, default=10, help="Untimed cycles first.")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    parser.add_argument(
        "--payload-bytes", type=int, default=1024, help="Of JSON, per task of the payload form."
    )
    parser.add_argument(
        "--history-rows",
        type=int,
        default=100_000,
        help="Done tasks (today: with an attempt each) beside the forms' namespaces.",
    )
    parser.add_argument(
        "--base-checkout",
        type=Path,
        help="A checkout of the code to compare with (its own migrations build its database).",
    )
    args = parser.parse_args(argv)
    if args.payload_bytes < 12:
        parser.error("a payload is at least 12 bytes of JSON")
    setup_django()
    from tasks_app import lease

    base = args.base_checkout.resolve() if args.base_checkout else None
    with bench_database(args.db_name, keep=args.keep), ExitStack() as stack:
        machine = machine_description()
        if base is not None:
            machine.append(("base checkout", f"{base} at {checkout_commit(base)}"))
        print_table(["", ""], machine, title="Machine")
        today = stack.enter_context(connect(database_url()))
        jsonb_as_text(today)
        before = base_lease = None
        if base is not None:
            base_url = stack.enter_context(
                checkout_database(BASE_DATABASE, str(base), keep=args.keep)
            )
            before = stack.enter_context(connect(base_url))
            base_lease = checkout_lease(base)
        rows = []
        for batch in args.batches:
            needed = batch * (args.rounds + args.warm_ups + 1)
            for conn in filter(None, (today, before)):
                conn.execute("TRUNCATE tasks_app_task, tasks_app_throughput CASCADE")
                conn.execute("DELETE FROM namespaces_app_namespace")
            load_today(today, needed, args.history_rows, args.payload_bytes)
            forms = {
                name: Form(today, lease, name, status) for name, (_, status, _) in FORMS.items()
            }
            if before is not None and base_lease is not None:
                load_base(before, needed, args.history_rows)
                forms = {"base": Form(before, base_lease, "base", "done"), **forms}
            order = list(forms.values())
            for round_number in range(args.warm_ups + args.rounds):
                # Rotate which form goes first, so none always follows another.
                for i in range(len(order)):
                    form = order[(round_number + i) % len(order)]
                    form.cycle(batch, timed=round_number >= args.warm_ups)
            medians = {name: statistics.median(form.cycle_ms) for name, form in forms.items()}
            for name, form in forms.items():
                rows.append(
                    (
                        batch,
                        name,
                        statistics.median(form.capture_ms),
                        statistics.median(form.release_ms),
                        medians[name],
                        percentile(form.cycle_ms, 99),
                        f"{medians[name] / medians['base']:.2f}" if "base" in medians else "-",
                        f"{medians[name] / medians['failures']:.2f}",
                    )
                )
        print_table(
            [
                "B",
                "form",
                "capture ms",
                "release ms",
                "cycle ms",
                "cycle p99 ms",
                "cycle / base",
                "cycle / failures",
            ],
            rows,
            title=(
                f"Capture then release, {args.rounds} cycles per form and batch, taking turns "
                "(medians)"
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
