"""Read-only figures for the operators' dashboard.

Every figure comes from an index: the partial indexes of `Task` hold exactly
the tasks each count needs. A count that would still read many rows (a
namespace with millions of done tasks) is replaced by the planner's estimate,
and marked as one, so the page stays fast whatever the table holds.
"""

import json
from collections import defaultdict
from dataclasses import dataclass, field
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
# partial index: idle tasks are counted from the capture index, whose
# condition the planner must see implied.
_CATEGORY_WHERE = {
    category.name: ("available_at IS NOT NULL AND " if category.name == "idle" else "")
    + category.where()
    for category in lease.CATEGORIES
}


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

    @property
    def total(self) -> Count:
        return Count(
            sum(c.value for c in self.counts.values()),
            any(c.estimated for c in self.counts.values()),
        )

    @property
    def health(self) -> str:
        """ "stuck", "lagging" or "ok", for the at-a-glance column."""
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


def _estimate(where: str, params: list[Any]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM tasks_app_task WHERE {where}", params)
        (plan,) = cursor.fetchone()  # type: ignore[misc]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def _for_estimate(where: str) -> str:
    # `available_at IS NOT NULL` is implied by `status = 'idle'`; the planner
    # takes the two as independent and would underestimate. It stays in the
    # counting query, where it selects the partial index.
    return where.replace("available_at IS NOT NULL AND ", "")


def _counts(category: str, namespace_ids: list[str]) -> dict[str, Count]:
    """One category's count per namespace: exact when small, else estimated."""
    where = _CATEGORY_WHERE[category]
    if _estimate(_for_estimate(where), []) <= EXACT_COUNT_LIMIT:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT namespace_id, count(*) FROM tasks_app_task WHERE {where} GROUP BY 1"
            )
            return {ns: Count(n) for ns, n in cursor.fetchall()}
    # Large overall: count namespace by namespace, estimating the large ones.
    counts: dict[str, Count] = {}
    scoped = f"namespace_id = %s AND {where}"
    for namespace_id in namespace_ids:
        estimate = _estimate(_for_estimate(scoped), [namespace_id])
        if estimate > EXACT_COUNT_LIMIT:
            counts[namespace_id] = Count(estimate, estimated=True)
            continue
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM tasks_app_task WHERE {scoped}", [namespace_id])
            (value,) = cursor.fetchone()  # type: ignore[misc]
        counts[namespace_id] = Count(value)
    return counts


def build_dashboard() -> Dashboard:
    namespace_ids = list(Namespace.objects.order_by("pk").values_list("pk", flat=True))
    stats = {ns: NamespaceStats(ns) for ns in namespace_ids}
    for category in CATEGORIES:
        counts = _counts(category, namespace_ids)
        for ns, entry in stats.items():
            entry.counts[category] = counts.get(ns, Count(0))

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {NOW}")
        (now,) = cursor.fetchone()  # type: ignore[misc]
        # Queue lag: the oldest idle task of each namespace, the first idle
        # entry of its range in `task_capture_idx`.
        cursor.execute(
            f"""
            SELECT n.id, EXTRACT(EPOCH FROM {NOW} - (
                SELECT t.available_at FROM tasks_app_task AS t
                WHERE t.namespace_id = n.id AND t.available_at IS NOT NULL
                  AND t.status = 'idle'
                ORDER BY t.available_at LIMIT 1))
            FROM namespaces_app_namespace AS n
            """
        )
        for ns, age in cursor.fetchall():
            if ns in stats and age is not None:
                stats[ns].oldest_idle_seconds = float(age)

        chart_start = (now - timedelta(minutes=CHART_MINUTES - 1)).replace(second=0, microsecond=0)
        cursor.execute(
            """
            SELECT namespace_id, date_trunc('minute', at), sum(done), sum(failed)
            FROM tasks_app_throughput
            WHERE at >= %s
            GROUP BY 1, 2
            """,
            [chart_start],
        )
        total_done = [0] * CHART_MINUTES
        total_failed = [0] * CHART_MINUTES
        per_ns: dict[str, tuple[list[int], list[int]]] = defaultdict(
            lambda: ([0] * CHART_MINUTES, [0] * CHART_MINUTES)
        )
        for ns, minute, done, failed in cursor.fetchall():
            index = int((minute - chart_start).total_seconds() // 60)
            if not 0 <= index < CHART_MINUTES:
                continue
            total_done[index] += done
            total_failed[index] += failed
            per_ns[ns][0][index] += done
            per_ns[ns][1][index] += failed
    for ns, (done_series, failed_series) in per_ns.items():
        if ns in stats:
            stats[ns].done_per_minute = done_series
            stats[ns].failed_per_minute = failed_series
    return Dashboard(
        namespaces=list(stats.values()),
        generated_at=now,
        chart_start=chart_start,
        done_per_minute=total_done,
        failed_per_minute=total_failed,
    )
