"""Read-only figures for the operators' dashboard.

Every figure comes from an index: the partial indexes of `Task` hold exactly
the tasks each count needs. A count that would still read many rows (a
namespace with millions of done tasks) is replaced by the planner's estimate,
and marked as one, so the page stays fast whatever the table holds.
"""

import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from namespaces_app.models import Namespace
from tasks_app import lease
from tasks_app.lease import NOW

# Above this many rows (by the planner's estimate), a count is estimated
# rather than counted.
EXACT_COUNT_LIMIT = 100_000
CHART_MINUTES = 60

CATEGORIES = tuple(category.name for category in lease.CATEGORIES)
CATEGORY_LABELS = {category.name: category.label for category in lease.CATEGORIES}

# Each category's rows (tasks_app.lease), as a WHERE clause served by one
# partial index: idle and scheduled tasks are counted from the capture index,
# whose condition the planner must see implied.
_CATEGORY_WHERE = {
    category.name: ("available_at IS NOT NULL AND " if category.turn else "") + category.where()
    for category in lease.CATEGORIES
}


# One category's tasks per namespace (`where`: its `_CATEGORY_WHERE`).
COUNT_BY_NAMESPACE = "SELECT namespace_id, count(*) FROM tasks_app_task WHERE {where} GROUP BY 1"

# Queue lag: per namespace, how long the oldest idle task whose turn has come
# has waited since then, in seconds (NULL when none waits); a scheduled task
# is not late. One short range scan of the capture index per priority level,
# as capture takes them, each ending at the clock, so neither the rest of a
# namespace's queue nor its scheduled tasks are read.
OLDEST_IDLE = f"""
SELECT n.id, EXTRACT(EPOCH FROM {NOW} - (
    SELECT min(oldest.available_at)
    FROM generate_series({lease.PRIORITIES[0]}, {lease.PRIORITIES[-1]}) AS p(priority)
    CROSS JOIN LATERAL (
        SELECT t.available_at FROM tasks_app_task AS t
        WHERE t.namespace_id = n.id AND t.priority = p.priority
          AND t.available_at IS NOT NULL AND {lease.CATEGORY["idle"].where("t.")}
        ORDER BY t.available_at LIMIT 1
    ) AS oldest))
FROM namespaces_app_namespace AS n
"""


@dataclass(frozen=True)
class _Estimation:
    """A category as its estimate is taken: its status (and retries), and the
    condition on a column that only some states fill (the lease's expiry, the
    turn), if it has one.

    The planner takes the two as independent, but that column is NULL for
    every finished task: a table of millions of done tasks would make it
    estimate a fraction of the idle, scheduled or leased tasks there are. The
    condition's share is taken among the rows that fill the column instead.
    """

    base: str
    column: str | None = None
    condition: str | None = None


def _estimation(category: lease.Category) -> _Estimation:
    base = replace(category, lease=None, turn=None).where()
    column = "lease_expires_at" if category.lease else "available_at" if category.turn else None
    if column is None:
        return _Estimation(base)
    prefix = f"{base} AND "
    where = category.where()
    assert where.startswith(prefix), where
    return _Estimation(base, column, where.removeprefix(prefix))


_ESTIMATIONS = {category.name: _estimation(category) for category in lease.CATEGORIES}


@dataclass(frozen=True)
class Count:
    value: int
    estimated: bool = False


@dataclass
class NamespaceStats:
    namespace_id: str
    counts: dict[str, Count] = field(default_factory=dict)
    oldest_idle_seconds: float | None = None
    done_per_minute: list[int] = field(default_factory=lambda: [0] * CHART_MINUTES)
    failed_per_minute: list[int] = field(default_factory=lambda: [0] * CHART_MINUTES)
    # Paused by an operator: its captures lease nothing until resumed.
    paused: bool = False
    expired_per_minute: list[int] = field(default_factory=lambda: [0] * CHART_MINUTES)

    @property
    def total(self) -> Count:
        return Count(
            sum(c.value for c in self.counts.values()),
            any(c.estimated for c in self.counts.values()),
        )

    @property
    def health(self) -> str:
        """ "paused", "stuck", "lagging" or "ok", for the at-a-glance column.

        A pause comes first: it explains whatever else the figures show."""
        if self.paused:
            return "paused"
        expired = self.counts.get("expired", Count(0)).value
        failed = self.counts.get("failed_for_good", Count(0)).value
        lag = self.oldest_idle_seconds or 0
        if expired or (lag > 600 and sum(self.done_per_minute[-10:]) == 0):
            return "stuck"
        if lag > 60 or failed:
            return "lagging"
        return "ok"


@dataclass
class Dashboard:
    namespaces: list[NamespaceStats]
    generated_at: datetime
    chart_start: datetime
    done_per_minute: list[int]
    failed_per_minute: list[int]
    expired_per_minute: list[int] = field(default_factory=lambda: [0] * CHART_MINUTES)


# Leases ended per namespace and minute since %(since)s, from the throughput
# log: `done` and `failed` releases (a worker's, or an operator's mark), and
# leases that ran out (`expired`). Events as they happened, not tasks as they
# are: a task released done and since deleted or requeued still counts, so
# these are never a part of the Done column. `{namespace}`: empty, or a
# condition on one namespace.
ENDED_PER_MINUTE = """
SELECT namespace_id, date_trunc('minute', at), sum(done), sum(failed), sum(expired)
FROM tasks_app_throughput
WHERE at >= %(since)s{namespace}
GROUP BY 1, 2
"""


@dataclass
class Ended:
    """Leases ended per minute over the chart window (CHART_MINUTES, the
    current minute last), by how they ended."""

    start: datetime
    done: list[int]
    failed: list[int]
    expired: list[int]

    @classmethod
    def empty(cls, start: datetime) -> "Ended":
        return cls(start, [0] * CHART_MINUTES, [0] * CHART_MINUTES, [0] * CHART_MINUTES)

    def add(self, minute: datetime, done: int, failed: int, expired: int) -> None:
        index = int((minute - self.start).total_seconds() // 60)
        if 0 <= index < CHART_MINUTES:
            self.done[index] += done
            self.failed[index] += failed
            self.expired[index] += expired


def _chart_start(now: datetime) -> datetime:
    return (now - timedelta(minutes=CHART_MINUTES - 1)).replace(second=0, microsecond=0)


def namespace_ended(namespace_id: str) -> Ended:
    """One namespace's leases ended per minute over the chart window."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {NOW}")
        (now,) = cursor.fetchone()  # type: ignore[misc]
        ended = Ended.empty(_chart_start(now))
        cursor.execute(
            ENDED_PER_MINUTE.format(namespace=" AND namespace_id = %(namespace_id)s"),
            {"since": ended.start, "namespace_id": namespace_id},
        )
        for _, minute, done, failed, expired in cursor.fetchall():
            ended.add(minute, done, failed, expired)
    return ended


def _estimate(where: str, params: list[Any]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM tasks_app_task WHERE {where}", params)
        (plan,) = cursor.fetchone()  # type: ignore[misc]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class _Estimator:
    """Planner estimates of the categories' rows, overall or in one namespace;
    each condition's share is taken once per dashboard."""

    def __init__(self) -> None:
        self._shares: dict[str, float] = {}

    def rows(self, category: str, namespace_id: str | None = None) -> int:
        parts = _ESTIMATIONS[category]
        if namespace_id is None:
            rows = _estimate(parts.base, [])
        else:
            rows = _estimate(f"namespace_id = %s AND {parts.base}", [namespace_id])
        if parts.column is None or parts.condition is None:
            return rows
        return math.ceil(rows * self._share(category))

    def rows_by_namespace(self, category: str, namespace_ids: list[str]) -> dict[str, int]:
        """`rows(category, ns)` for every namespace, planned in one statement."""
        if not namespace_ids:
            return {}
        parts = _ESTIMATIONS[category]
        branch = f"SELECT 1 FROM tasks_app_task WHERE namespace_id = %s AND {parts.base}"
        with connection.cursor() as cursor:
            cursor.execute(
                "EXPLAIN (FORMAT JSON) " + " UNION ALL ".join([branch] * len(namespace_ids)),
                namespace_ids,
            )
            (plan,) = cursor.fetchone()  # type: ignore[misc]
        if isinstance(plan, str):
            plan = json.loads(plan)
        top = plan[0]["Plan"]
        branches = top["Plans"] if len(namespace_ids) > 1 else [top]
        share = 1.0 if parts.column is None else self._share(category)
        return {
            ns: math.ceil(int(node["Plan Rows"]) * share)
            for ns, node in zip(namespace_ids, branches, strict=True)
        }

    def _share(self, category: str) -> float:
        parts = _ESTIMATIONS[category]
        if parts.column is None or parts.condition is None:
            return 1.0
        if category not in self._shares:
            filled = _estimate(f"{parts.column} IS NOT NULL", [])
            self._shares[category] = min(_estimate(parts.condition, []) / max(filled, 1), 1.0)
        return self._shares[category]


def _counts(
    category: str, namespace_ids: list[str], estimator: _Estimator, limit: int | None = None
) -> dict[str, Count]:
    """One category's count per namespace, reading at most `limit`
    (EXACT_COUNT_LIMIT) index entries however many tasks there are.

    Small overall: one grouped count, exact. Large (a table of millions of
    done tasks): the namespaces are counted exactly smallest first, by
    their estimates, as long as the entries read stay within the limit, and
    the others are the planner's estimates. So the cost of a dashboard or a
    scrape does not grow with the tasks a namespace keeps, however many
    namespaces share them.
    """
    where = _CATEGORY_WHERE[category]
    limit = EXACT_COUNT_LIMIT if limit is None else limit
    if estimator.rows(category) <= limit:
        with connection.cursor() as cursor:
            cursor.execute(COUNT_BY_NAMESPACE.format(where=where))
            return {ns: Count(n) for ns, n in cursor.fetchall()}
    estimates = estimator.rows_by_namespace(category, namespace_ids)
    counted: list[str] = []
    budget = limit
    for namespace_id in sorted(namespace_ids, key=lambda ns: estimates[ns]):
        if estimates[namespace_id] > budget:
            break
        budget -= estimates[namespace_id]
        counted.append(namespace_id)
    counts = {
        ns: Count(estimate, estimated=True)
        for ns, estimate in estimates.items()
        if ns not in counted
    }
    if counted:
        with connection.cursor() as cursor:
            cursor.execute(
                COUNT_BY_NAMESPACE.format(where=f"namespace_id = ANY(%s) AND {where}"), [counted]
            )
            exact = dict(cursor.fetchall())
        counts.update({ns: Count(exact.get(ns, 0)) for ns in counted})
    return counts


# The categories a namespace keeps piling up (history, until purged), unlike
# the work in hand, which its workers bound.
FINISHED = ("done", "failed_for_good")


def build_dashboard(*, chart: bool = True, finished_limit: int | None = None) -> Dashboard:
    """Every namespace's figures; without `chart`, its per-minute series stay
    zero and the throughput log is not read (the metrics' counters read it
    whole instead). `finished_limit`: the entries the FINISHED categories'
    counts may read (default EXACT_COUNT_LIMIT, as every other's)."""
    namespaces = list(Namespace.objects.order_by("pk").values_list("pk", "paused_at"))
    namespace_ids = [ns for ns, _ in namespaces]
    stats = {ns: NamespaceStats(ns, paused=paused_at is not None) for ns, paused_at in namespaces}
    estimator = _Estimator()
    for category in CATEGORIES:
        limit = finished_limit if category in FINISHED else None
        counts = _counts(category, namespace_ids, estimator, limit)
        for ns, entry in stats.items():
            entry.counts[category] = counts.get(ns, Count(0))

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {NOW}")
        (now,) = cursor.fetchone()  # type: ignore[misc]
        cursor.execute(OLDEST_IDLE)
        for ns, age in cursor.fetchall():
            if ns in stats and age is not None:
                stats[ns].oldest_idle_seconds = float(age)

        total = Ended.empty(_chart_start(now))
        if chart:
            cursor.execute(ENDED_PER_MINUTE.format(namespace=""), {"since": total.start})
        per_ns: dict[str, Ended] = {}
        for ns, minute, done, failed, expired in cursor.fetchall() if chart else ():
            total.add(minute, done, failed, expired)
            if ns in stats:
                per_ns.setdefault(ns, Ended.empty(total.start)).add(minute, done, failed, expired)
    for ns, ended in per_ns.items():
        stats[ns].done_per_minute = ended.done
        stats[ns].failed_per_minute = ended.failed
        stats[ns].expired_per_minute = ended.expired
    return Dashboard(
        namespaces=list(stats.values()),
        generated_at=now,
        chart_start=total.start,
        done_per_minute=total.done,
        failed_per_minute=total.failed,
        expired_per_minute=total.expired,
    )


# The states under the names the API and the metrics give them.
PUBLIC_STATE = {category.name: category.public_name for category in lease.CATEGORIES}

# Tasks captured and leases ended in one namespace since %(since)s, from the
# throughput log (to the minute: the sweeper stamps a compacted minute at its
# start).
THROUGHPUT_SINCE = """
SELECT coalesce(sum(captured), 0), coalesce(sum(done), 0), coalesce(sum(failed), 0),
       coalesce(sum(expired), 0)
FROM tasks_app_throughput
WHERE namespace_id = %(namespace_id)s AND at >= %(since)s
"""
THROUGHPUT_FIELDS = ("captured", "done", "failed", "expired")


@dataclass(frozen=True)
class NamespaceFigures:
    """One namespace at a glance (GET /v1/namespace/{id}/stats)."""

    namespace: Namespace
    counts: dict[str, Count]
    oldest_idle_seconds: float | None
    in_flight: int
    # THROUGHPUT_FIELDS over the last 5 and the last 60 minutes.
    throughput_5_minutes: dict[str, int]
    throughput_60_minutes: dict[str, int]


def namespace_figures(namespace_id: str) -> NamespaceFigures | None:
    """Counts per state (exact, or the planner's estimate above
    EXACT_COUNT_LIMIT rows, marked), queue lag, valid leases and throughput
    of one namespace, each from an index; None when it does not exist."""
    namespace = Namespace.objects.filter(pk=namespace_id).first()
    if namespace is None:
        return None
    estimator = _Estimator()
    counts: dict[str, Count] = {}
    with connection.cursor() as cursor:
        for category in CATEGORIES:
            estimate = estimator.rows(category, namespace_id)
            if estimate > EXACT_COUNT_LIMIT:
                counts[category] = Count(estimate, estimated=True)
                continue
            cursor.execute(
                f"SELECT count(*) FROM tasks_app_task"
                f" WHERE namespace_id = %s AND {_CATEGORY_WHERE[category]}",
                [namespace_id],
            )
            (value,) = cursor.fetchone()  # type: ignore[misc]
            counts[category] = Count(value)
        cursor.execute(f"{OLDEST_IDLE} WHERE n.id = %s", [namespace_id])
        (_, age) = cursor.fetchone()  # type: ignore[misc]
        cursor.execute(lease.IN_FLIGHT, {"namespace_id": namespace_id})
        (in_flight,) = cursor.fetchone()  # type: ignore[misc]
        cursor.execute(f"SELECT {NOW}")
        (now,) = cursor.fetchone()  # type: ignore[misc]
        throughput = []
        for minutes in (5, 60):
            since = now - timedelta(minutes=minutes)
            cursor.execute(THROUGHPUT_SINCE, {"namespace_id": namespace_id, "since": since})
            row = cursor.fetchone()
            assert row is not None
            throughput.append(dict(zip(THROUGHPUT_FIELDS, row, strict=True)))
    return NamespaceFigures(
        namespace=namespace,
        counts=counts,
        oldest_idle_seconds=None if age is None else float(age),
        in_flight=in_flight,
        throughput_5_minutes=throughput[0],
        throughput_60_minutes=throughput[1],
    )
