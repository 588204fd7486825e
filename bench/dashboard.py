"""Benchmark the admin dashboard: how long the index page takes with a million tasks.

Run from the repository root:

    .venv/bin/python -m bench.dashboard [--rows 1000000]

What it measures, in one run, in a database of its own (`taskq_bench_dashboard`,
created for the run and dropped at the end unless `--keep`):

1. a logged-in superuser's GET of the admin index (`/admin/`: the dashboard's
   queries, the templates, the inline SVG, the admin's app list), through
   `django.test.Client`, so the whole middleware stack runs; and GET of the
   fragment the page re-fetches every few seconds (`/admin/dashboard/`);
2. both first with `--baseline-rows` tasks (the baseline), then again after
   loading up to `--rows` tasks with the same mix, and the ratio;
3. at `--rows`: which counts the dashboard estimated instead of counting, how
   far each estimate is from the exact count, and where the time of one
   render goes, statement by statement, with EXPLAIN ANALYZE of the slowest.

The tasks are a plausible production table: most done (85%), a backlog of
idle tasks (8%), some leased (4%, a quarter of those leases expired), some
failed with and without retries left (3%), over ten namespaces of very
different sizes (the largest holds a third of the tasks, the smallest 3%).
Every row satisfies the CHECK constraint `task_state_consistent`. Other
shapes, for the cases the dashboard finds hardest: `--spread even` (every
namespace under the exact-count limit), `--namespaces 100`, and
`--done-share` / `--idle-share` (e.g. a large idle backlog).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.common import (
    Executed,
    add_database_arguments,
    argument_parser,
    bench_database,
    line_buffered_stdout,
    load_average,
    machine_description,
    percentile,
    print_table,
    recorded_statements,
    settle,
    setup_django,
    verdict,
)

BENCH_DB = "taskq_bench_dashboard"
TARGET_MS = 300.0

# By default ten namespaces, the k-th (from 1) holding a share proportional
# to 1/k (`--spread zipf`): a few large queues and a tail of small ones, so
# that at a million tasks some namespaces cross the dashboard's
# EXACT_COUNT_LIMIT and some do not. `--spread even` gives them all the same
# share, the dashboard's worst case at a given size: every count stays under
# the limit and is counted exactly. More namespaces than these names get
# numbered ones.
NAMES = (
    "emails",
    "thumbnails",
    "webhooks",
    "billing",
    "reports",
    "search-index",
    "exports",
    "notifications",
    "imports",
    "cleanup",
)

# Share of each status among the tasks (the defaults of --done-share and
# --idle-share; failed takes what is left), and within a status what splits it.
SHARE_DONE = 0.85
SHARE_IDLE = 0.08
SHARE_IN_PROGRESS = 0.04
EXPIRED_SHARE_OF_LEASES = 0.25
FOR_GOOD_SHARE_OF_FAILED = 0.5

# Rows generated from generate_series in one statement, straight into the
# table: through the ORM or the API a million rows would take many minutes.
#
# Each row draws its uniform numbers in [0, 1) from a hash of its number and a
# seed (`hashint8extended`): reproducible run to run, independent of one
# another, and unrelated to the physical order of the rows, like the mix of
# namespaces and states in a real table that grew over weeks.
#
# The columns follow `Task`'s rules (and its CHECK constraint):
#   idle            available_at = when it was registered (FIFO), no lease;
#   in_progress     lease_expires_at set (in the past when expired), and
#                   available_at = lease_expires_at when retries are left,
#                   else NULL;
#   done            neither;
#   failed          available_at = when it failed iff retries are left.
LOAD_TASKS = """
INSERT INTO tasks_app_task
    (id, namespace_id, timeout, retries_left, status,
     created_at, updated_at, available_at, lease_expires_at)
SELECT 'job-' || lpad(g::text, %(id_width)s, '0'),
       (%(namespaces)s::text[])[width_bucket(u.ns, %(bounds)s::float8[])],
       s.timeout, s.retries_left, s.status, s.created_at, s.updated_at,
       CASE
           WHEN s.status = 'idle' THEN s.created_at
           WHEN s.status = 'in_progress' AND s.retries_left > 0 THEN s.lease_expires_at
           WHEN s.status = 'failed' AND s.retries_left > 0 THEN s.updated_at
       END,
       s.lease_expires_at
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
CROSS JOIN LATERAL (
    SELECT (hashint8extended(g, 1) & 4294967295)::float8 / 4294967296 AS ns,
           (hashint8extended(g, 2) & 4294967295)::float8 / 4294967296 AS state,
           (hashint8extended(g, 3) & 4294967295)::float8 / 4294967296 AS sub,
           (hashint8extended(g, 4) & 4294967295)::float8 / 4294967296 AS age,
           statement_timestamp() AS now
) AS u
CROSS JOIN LATERAL (
    SELECT v.*,
           CASE v.status
               WHEN 'done' THEN v.created_at + make_interval(secs => 1 + u.sub * v.timeout)
               WHEN 'failed' THEN v.created_at + make_interval(secs => 1 + u.sub * v.timeout)
               WHEN 'in_progress' THEN v.lease_expires_at - make_interval(secs => v.timeout)
               ELSE v.created_at
           END AS updated_at
    FROM (
        SELECT w.*,
               CASE
                   WHEN w.status <> 'in_progress' THEN NULL
                   -- Expired: run out up to an hour ago (the sweeper is behind).
                   WHEN u.sub < %(expired_share)s
                       THEN u.now - make_interval(secs => 1 + u.age * 3600)
                   ELSE u.now + make_interval(secs => 1 + u.age * (w.timeout - 1))
               END AS lease_expires_at,
               CASE w.status
                   -- The idle backlog: registered over the last two hours.
                   WHEN 'idle' THEN u.now - make_interval(secs => u.age * 7200)
                   WHEN 'in_progress' THEN u.now - make_interval(secs => 3600 + u.age * 86400)
                   -- Done and failed: over the last week.
                   ELSE u.now - make_interval(secs => 3600 + u.age * 604800)
               END AS created_at,
               CASE
                   WHEN w.status = 'failed' AND u.sub < %(for_good_share)s THEN 0
                   WHEN w.status = 'failed' THEN 1 + g %% 3
                   ELSE g %% 4
               END AS retries_left
        FROM (
            SELECT CASE
                       WHEN u.state < %(done_below)s THEN 'done'
                       WHEN u.state < %(idle_below)s THEN 'idle'
                       WHEN u.state < %(in_progress_below)s THEN 'in_progress'
                       ELSE 'failed'
                   END AS status,
                   60 * (1 + g %% 10) AS timeout
        ) AS w
    ) AS v
) AS s
"""

# What workers finished over the last hour: one row per releasing statement
# and namespace, as `tasks_app.lease` writes them.
LOAD_THROUGHPUT = """
INSERT INTO tasks_app_throughput (namespace_id, at, done, failed)
SELECT (%(namespaces)s::text[])[width_bucket(
           (hashint8extended(g, 5) & 4294967295)::float8 / 4294967296, %(bounds)s::float8[])],
       statement_timestamp() - make_interval(
           secs => (hashint8extended(g, 6) & 4294967295)::float8 / 4294967296 * 3600),
       1 + g %% 20,
       (g %% 10 = 0)::int
FROM generate_series(1, %(rows)s) AS g
"""


@dataclass(frozen=True)
class Layout:
    """The namespaces, and the lower bound of each one's slice of [0, 1) (for `width_bucket`)."""

    names: list[str]
    bounds: list[float]

    @classmethod
    def of(cls, count: int, spread: str) -> Layout:
        names = [*NAMES[:count], *(f"queue-{k:03d}" for k in range(len(NAMES) + 1, count + 1))]
        weights = [1 / k if spread == "zipf" else 1.0 for k in range(1, count + 1)]
        total = sum(weights)
        bounds, running = [], 0.0
        for weight in weights:
            bounds.append(running)
            running += weight / total
        return cls(names, bounds)


def load_tasks(
    first: int, last: int, *, id_width: int, layout: Layout, done_share: float, idle_share: float
) -> float:
    """Insert tasks number `first`..`last`; return the seconds taken (with VACUUM ANALYZE)."""
    from django.db import connection

    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            LOAD_TASKS,
            {
                "first": first,
                "last": last,
                "id_width": id_width,
                "namespaces": layout.names,
                "bounds": layout.bounds,
                "expired_share": EXPIRED_SHARE_OF_LEASES,
                "for_good_share": FOR_GOOD_SHARE_OF_FAILED,
                "done_below": done_share,
                "idle_below": done_share + idle_share,
                "in_progress_below": done_share + idle_share + SHARE_IN_PROGRESS,
            },
        )
    settle()
    return time.monotonic() - started


def prepare(throughput_rows: int, layout: Layout) -> Any:
    """Namespaces, the chart's last hour, and a superuser; return a logged-in client."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client

    from namespaces_app.models import Namespace

    Namespace.objects.bulk_create([Namespace(id=ns) for ns in layout.names])
    with connection.cursor() as cursor:
        cursor.execute(
            LOAD_THROUGHPUT,
            {"rows": throughput_rows, "namespaces": layout.names, "bounds": layout.bounds},
        )
    user = User.objects.create_superuser("bench", "bench@example.com", None)
    # Host "localhost": in ALLOWED_HOSTS by default, unlike the client's own
    # "testserver" (which only the test runner adds).
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    return client


# --- Timing pages -------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    page: str
    tasks: int
    samples: list[float]  # milliseconds, in the order measured
    html_bytes: int

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)

    @property
    def max(self) -> float:
        return max(self.samples)


def time_page(client: Any, path: str, *, tasks: int, warm_ups: int, repeats: int) -> Timing:
    """GET `path` `warm_ups` times unmeasured (caches, connection), then `repeats` times."""
    html = b""
    for _ in range(warm_ups):
        html = get(client, path)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        html = get(client, path)
        samples.append((time.perf_counter() - started) * 1000)
    return Timing(path, tasks, samples, len(html))


def get(client: Any, path: str) -> bytes:
    response = client.get(path)
    if response.status_code != 200:
        raise SystemExit(f"GET {path} answered {response.status_code}")
    content: bytes = response.content
    # A superuser always sees the dashboard; without it the page is the
    # plain admin index and the figures would mean nothing.
    if b'class="taskq-dash"' not in content:
        raise SystemExit(f"GET {path} did not render the dashboard")
    return content


# --- Where the time goes ------------------------------------------------------------


def capture_statements(action: Callable[[], object]) -> tuple[float, list[Executed]]:
    """Run `action`, timing every statement it executes; return (total ms, statements)."""
    started = time.perf_counter()
    with recorded_statements() as statements:
        action()
    return (time.perf_counter() - started) * 1000, statements


def label(sql: str) -> str:
    """A short name for a statement, the same for every namespace it runs for."""
    text = " ".join(sql.split())
    where = re.search(r"WHERE (.*?)(?: GROUP BY|$)", text)
    condition = where.group(1) if where else ""
    condition = condition.replace("statement_timestamp()", "now").replace(
        "namespace_id = %s AND ", ""
    )
    if text.startswith("EXPLAIN"):
        scope = "one namespace" if "namespace_id = %s" in text else "all"
        return f"estimate ({scope}): {condition}"
    if text.startswith("SELECT namespace_id, count(*) FROM tasks_app_task"):
        return f"count, grouped by namespace: {condition}"
    if text.startswith("SELECT count(*) FROM tasks_app_task"):
        return f"count, one namespace: {condition}"
    if "tasks_app_throughput" in text:
        return "throughput of the last hour"
    if "ORDER BY t.available_at LIMIT 1" in text:
        return "oldest idle task per namespace"
    table = re.search(r'FROM "?(\w+)"?', text)
    # The request's own: session, user, the admin's recent actions, namespaces.
    return f"ORM: {table.group(1)}" if table else text[:60]


ProfileRow = tuple[str, int | str, float, float | str]


def profile(client: Any, path: str, runs: int) -> tuple[list[ProfileRow], Executed | None]:
    """Per statement kind: (label, calls per page, median ms per page, max single ms).

    Also returns the slowest single statement seen, to EXPLAIN ANALYZE.
    """
    per_run: list[dict[str, list[float]]] = []
    slowest: Executed | None = None
    totals: list[tuple[float, float]] = []
    for _ in range(runs):
        total, statements = capture_statements(lambda: get(client, path))
        by_label: dict[str, list[float]] = defaultdict(list)
        for statement in statements:
            by_label[label(statement.sql)].append(statement.ms)
            if slowest is None or statement.ms > slowest.ms:
                slowest = statement
        per_run.append(by_label)
        totals.append((total, sum(s.ms for s in statements)))
    rows: list[ProfileRow] = []
    for name in per_run[0]:
        spent = [sum(run.get(name, [0.0])) for run in per_run]
        rows.append(
            (
                name,
                len(per_run[0][name]),
                percentile(spent, 50),
                max(max(run.get(name, [0.0])) for run in per_run),
            )
        )
    rows.sort(key=lambda row: -row[2])
    page = percentile([t for t, _ in totals], 50)
    database = percentile([d for _, d in totals], 50)
    calls = sum(len(found) for found in per_run[0].values())
    rows.append(("(all statements)", calls, database, ""))
    rows.append(("(the rest: Python, templates, SVG, middleware)", "", page - database, ""))
    return rows, slowest


def explain(statement: Executed) -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        sql = statement.sql
        if sql.startswith("EXPLAIN"):
            sql = sql.split(" ", 3)[3]  # strip "EXPLAIN (FORMAT JSON)"
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, statement.params)
        return [row[0] for row in cursor.fetchall()]


def estimated_counts() -> list[tuple[str, str, int, int]]:
    """(namespace, category, estimate shown, exact count) for every estimated cell."""
    from django.db import connection

    from tasks_app import dashboard

    board = dashboard.build_dashboard()
    cells = [
        (stats.namespace_id, category, count.value)
        for stats in board.namespaces
        for category, count in stats.counts.items()
        if count.estimated
    ]
    exact: dict[tuple[str, str], int] = {}
    with connection.cursor() as cursor:
        for category in {category for _, category, _ in cells}:
            where = dashboard._CATEGORY_WHERE[category]
            cursor.execute(
                f"SELECT namespace_id, count(*) FROM tasks_app_task WHERE {where} GROUP BY 1"
            )
            exact.update({(ns, category): n for ns, n in cursor.fetchall()})
    return [(ns, category, shown, exact.get((ns, category), 0)) for ns, category, shown in cells]


def table_mix() -> list[tuple[str, int]]:
    """How many tasks of each dashboard category the table holds, to check the load."""
    from django.db import connection

    from tasks_app import dashboard

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT "
            + ", ".join(
                f"count(*) FILTER (WHERE {dashboard._CATEGORY_WHERE[c]})"
                for c in dashboard.CATEGORIES
            )
            + " FROM tasks_app_task"
        )
        counts = cursor.fetchone()
    assert counts is not None
    return list(zip(dashboard.CATEGORIES, counts, strict=True))


# --- Main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argument_parser("bench.dashboard", __doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="tasks at the measured point")
    parser.add_argument(
        "--baseline-rows", type=int, default=10_000, help="tasks at the baseline point"
    )
    parser.add_argument("--repeats", type=int, default=30, help="measured GETs per page and size")
    parser.add_argument("--warm-ups", type=int, default=3, help="unmeasured GETs before those")
    parser.add_argument("--namespaces", type=int, default=10, help="how many namespaces")
    parser.add_argument(
        "--spread",
        choices=("zipf", "even"),
        default="zipf",
        help="tasks per namespace: proportional to 1/k (default), or equal",
    )
    parser.add_argument("--done-share", type=float, default=SHARE_DONE, help="share of done tasks")
    parser.add_argument("--idle-share", type=float, default=SHARE_IDLE, help="share of idle tasks")
    parser.add_argument(
        "--throughput-rows",
        type=int,
        default=12_000,
        help="rows in tasks_app_throughput over the last hour (one per releasing statement)",
    )
    parser.add_argument("--profile-runs", type=int, default=5, help="renders profiled at --rows")
    add_database_arguments(parser, BENCH_DB)
    args = parser.parse_args(argv)
    if not 0 < args.baseline_rows < args.rows:
        parser.error("need 0 < --baseline-rows < --rows")
    if min(args.done_share, args.idle_share) < 0 or (
        args.done_share + args.idle_share + SHARE_IN_PROGRESS > 1
    ):
        parser.error(f"need shares >= 0 with done + idle <= {1 - SHARE_IN_PROGRESS}")
    if args.namespaces < 1:
        parser.error("--namespaces must be positive")
    if args.repeats < 1 or args.warm_ups < 0 or args.profile_runs < 1:
        parser.error("--repeats and --profile-runs must be positive, --warm-ups not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    line_buffered_stdout()
    setup_django()
    with bench_database(args.db_name, keep=args.keep):
        return run(args)


def run(args: argparse.Namespace) -> int:
    from django.urls import reverse

    from tasks_app.dashboard import EXACT_COUNT_LIMIT

    print_table(["Machine", ""], machine_description(), title="## Dashboard benchmark")
    pages = [reverse("admin:index"), reverse("admin:taskq_dashboard_fragment")]
    id_width = max(7, len(str(args.rows)))

    layout = Layout.of(args.namespaces, args.spread)
    print(
        f"\nNamespaces: {args.namespaces}, tasks spread {args.spread}; "
        f"done {args.done_share:.0%}, idle {args.idle_share:.0%}, in progress "
        f"{SHARE_IN_PROGRESS:.0%}, failed the rest"
    )
    client = prepare(args.throughput_rows, layout)
    timings: list[Timing] = []
    loaded = 0
    for size in (args.baseline_rows, args.rows):
        print(f"\nLoading tasks {loaded + 1:,} to {size:,}...")
        seconds = load_tasks(
            loaded + 1,
            size,
            id_width=id_width,
            layout=layout,
            done_share=args.done_share,
            idle_share=args.idle_share,
        )
        print(f"  loaded, vacuumed and analysed in {seconds:.1f}s")
        loaded = size
        for path in pages:
            timing = time_page(
                client, path, tasks=size, warm_ups=args.warm_ups, repeats=args.repeats
            )
            print(f"  GET {path}: p50 {timing.p50:.1f} ms, p95 {timing.p95:.1f} ms")
            timings.append(timing)

    print_table(["Category", "tasks"], table_mix(), title=f"### The table at {args.rows:,} tasks")
    print_table(
        ["Page", "tasks", "p50 ms", "p95 ms", "max ms", "HTML bytes"],
        [(t.page, t.tasks, t.p50, t.p95, t.max, t.html_bytes) for t in timings],
        title=f"### Render times ({args.repeats} GETs each after {args.warm_ups} warm-ups)",
    )

    estimated = estimated_counts()
    print_table(
        ["Namespace", "category", "shown (≈)", "exact", "error"],
        [
            (ns, category, shown, exact, f"{(shown - exact) / exact:+.1%}" if exact else "n/a")
            for ns, category, shown, exact in estimated
        ],
        title=f"### Counts shown as estimates at {args.rows:,} tasks "
        f"(EXACT_COUNT_LIMIT = {EXACT_COUNT_LIMIT:,})",
    )
    if not estimated:
        print("(none: every count was exact)")

    rows, slowest = profile(client, pages[0], args.profile_runs)
    print_table(
        ["Statement", "calls", "ms per page (median)", "slowest single ms"],
        rows,
        title=f"### Where one GET {pages[0]} spends its time at {args.rows:,} tasks "
        f"(median of {args.profile_runs} GETs)",
    )
    if slowest is not None:
        print(f"\nEXPLAIN (ANALYZE, BUFFERS) of the slowest statement ({slowest.ms:.1f} ms):\n")
        print(" ".join(slowest.sql.split()), "--", slowest.params)
        print("\n".join("    " + line for line in explain(slowest)))

    baseline = {t.page: t for t in timings if t.tasks == args.baseline_rows}
    measured = [t for t in timings if t.tasks == args.rows]
    index_page = next(t for t in measured if t.page == pages[0])
    print_table(
        ["Target", "measured", ""],
        [
            (
                f"GET {pages[0]} p95 < {TARGET_MS:.0f} ms at {args.rows:,} tasks",
                f"{index_page.p95:.1f} ms (p50 {index_page.p50:.1f})",
                verdict(index_page.p95 < TARGET_MS),
            ),
            *(
                (
                    f"(ratio p50 {t.page} at {args.rows:,} / at {args.baseline_rows:,})",
                    f"{t.p50 / baseline[t.page].p50:.2f}",
                    "",
                )
                for t in measured
            ),
        ],
        title="### Targets",
    )
    print(f"\nLoad average at end: {load_average()}")
    return 0 if index_page.p95 < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
