"""What the lease fence costs the release statement, measured in SQL alone.

    .venv/bin/python -m bench.fence [--rounds 300] [--batches 1 100]

One connection, no HTTP: each round captures B tasks with the product's
capture statement, then releases them `done` with one of three statements,
and only the release is timed:

- `seed`: the release statement as it was before lease tokens (kept here as
  the baseline: it locked only in-progress rows and returned only them);
- `ids`: today's statement in the seed's `task_ids` form (no tokens);
- `leases`: today's statement, fenced by the tokens capture returned.

The three take turns round by round, so drift in the machine's load falls on
all of them alike; the figures are medians, and the ratios to `seed` are what
to read.
"""

from __future__ import annotations

import statistics
import sys
import time

from bench.common import (
    LOAD_IDLE_TASKS,
    argument_parser,
    bench_database,
    connect,
    database_url,
    machine_description,
    percentile,
    print_table,
    setup_django,
)

DATABASE = "taskq_fence"
NAMESPACE = "bench"

# The release statement before lease tokens existed, without the throughput
# log (which all three share and which is not what is compared here).
SEED_RELEASE = """
WITH target AS (
    SELECT id
    FROM tasks_app_task
    WHERE id = ANY(%(ids)s) AND status = 'in_progress'
      AND (%(scope)s::text[] IS NULL OR namespace_id = ANY(%(scope)s::text[]))
    ORDER BY id
    FOR UPDATE
), released AS (
    UPDATE tasks_app_task AS t
    SET status = %(status)s::text,
        updated_at = statement_timestamp(),
        lease_expires_at = NULL,
        available_at = CASE
            WHEN %(status)s::text = 'idle' THEN statement_timestamp()
            WHEN %(status)s::text = 'failed' AND t.retries_left > 0 THEN statement_timestamp()
        END
    FROM target
    WHERE t.id = target.id
    RETURNING t.id, t.namespace_id, t.timeout, t.retries_left, t.updated_at, t.status,
              t.lease_expires_at, t.attempt
), logged AS (
    INSERT INTO tasks_app_throughput (namespace_id, at, done, failed)
    SELECT namespace_id, statement_timestamp(),
           count(*) FILTER (WHERE status = 'done'),
           count(*) FILTER (WHERE status = 'failed')
    FROM released
    WHERE status IN ('done', 'failed')
    GROUP BY namespace_id
)
SELECT * FROM released
"""

FORMS = ("seed", "ids", "leases")


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser("bench.fence", __doc__)
    parser.add_argument("--rounds", type=int, default=300, help="Releases per form and batch.")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    args = parser.parse_args(argv)
    setup_django()
    from tasks_app import lease

    with bench_database(DATABASE):
        print_table(["", ""], machine_description(), title="Machine")
        url = database_url()
        rows = []
        for batch in args.batches:
            timings: dict[str, list[float]] = {form: [] for form in FORMS}
            with connect(url, prepare_threshold=0) as conn:
                conn.execute("TRUNCATE tasks_app_task, tasks_app_throughput CASCADE")
                conn.execute(
                    "INSERT INTO namespaces_app_namespace (id) VALUES (%s) ON CONFLICT DO NOTHING",
                    [NAMESPACE],
                )
                conn.execute(
                    LOAD_IDLE_TASKS,
                    {"namespace_id": NAMESPACE, "rows": batch * args.rounds * len(FORMS) + batch},
                )
                conn.execute("VACUUM ANALYZE tasks_app_task")
                for round_number in range(args.rounds * len(FORMS)):
                    # Rotate which form goes first, so none always follows another.
                    form = FORMS[(round_number + round_number // len(FORMS)) % len(FORMS)]
                    captured = conn.execute(
                        lease.CAPTURE, lease.capture_params(NAMESPACE, batch)
                    ).fetchall()
                    ids = [row[0] for row in captured]
                    tokens = [row[lease.CAPTURED_TOKEN] for row in captured]
                    if form == "seed":
                        statement = SEED_RELEASE
                        params: dict = {"ids": ids, "status": "done", "scope": None}
                    else:
                        statement = lease.RELEASE
                        params = lease.release_params(
                            ids, tokens if form == "leases" else None, "done"
                        )
                    began = time.perf_counter()
                    released = conn.execute(statement, params).fetchall()
                    timings[form].append(time.perf_counter() - began)
                    assert len(released) == len(ids)
            seed = statistics.median(timings["seed"])
            for form in FORMS:
                median = statistics.median(timings[form])
                rows.append(
                    (
                        batch,
                        form,
                        median * 1000,
                        percentile(timings[form], 99) * 1000,
                        f"{median / seed:.2f}",
                    )
                )
        print_table(
            ["B", "release", "median ms", "p99 ms", "median / seed"],
            rows,
            title=f"The release statement alone, {args.rounds} rounds per form, taking turns",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
