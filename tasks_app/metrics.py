"""The task figures of `GET /metrics`, computed from the database at each scrape.

Computed, not counted in memory: every gunicorn process (and every server)
answers the same figures, whichever one the scraper reaches, and nothing is
lost when a process restarts. The gauges come from the dashboard's index
reads (tasks_app.dashboard), so a scrape costs what the dashboard costs and
does not grow with the number of done tasks: a count above
dashboard.EXACT_COUNT_LIMIT rows is the planner's estimate. The counters are
the throughput log's sums (tasks_app.lease.THROUGHPUT_TOTALS), which the
sweeper keeps to a few rows per namespace and minute. The HTTP figures are
each server's own (taskq_project.http_metrics).
"""

from collections.abc import Iterator
from typing import Any

from django.db import connection
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from namespaces_app.models import Namespace
from tasks_app import lease
from tasks_app.dashboard import PUBLIC_STATE, build_dashboard
from tasks_app.models import SweepRecord
from tasks_app.sweeper import RECLAIM_JOB

# The index entries a scrape's counts of done and failed-for-good tasks may
# read, each: the history a namespace keeps, which only grows, costs a scrape
# no more than this, the rest being the planner's estimates. The tasks in
# hand are counted exactly up to the dashboard's limit.
FINISHED_COUNT_LIMIT = 10_000


class TaskqCollector(Collector):
    """The gauges of every namespace, read when collected."""

    def collect(self) -> Iterator[Any]:
        dashboard = build_dashboard(chart=False, finished_limit=FINISHED_COUNT_LIMIT)
        # The dashboard knows which are paused; only the caps are read here.
        limited: dict[str, int] = {
            ns: cap
            for ns, cap in Namespace.objects.filter(max_in_flight__isnull=False).values_list(
                "id", "max_in_flight"
            )
            if cap is not None
        }
        tasks = GaugeMetricFamily(
            "taskq_tasks",
            "Tasks per namespace and state (the planner's estimate above 100,000 rows).",
            labels=["namespace", "state"],
        )
        lag = GaugeMetricFamily(
            "taskq_oldest_idle_age_seconds",
            "How long the oldest capturable task of the namespace has waited (0: none waits).",
            labels=["namespace"],
        )
        paused = GaugeMetricFamily(
            "taskq_namespace_paused", "1 while the namespace is paused.", labels=["namespace"]
        )
        limits = GaugeMetricFamily(
            "taskq_namespace_max_in_flight",
            "The namespace's cap on valid leases, where it has one.",
            labels=["namespace"],
        )
        for stats in dashboard.namespaces:
            for state, count in stats.counts.items():
                tasks.add_metric([stats.namespace_id, PUBLIC_STATE[state]], count.value)
            lag.add_metric([stats.namespace_id], stats.oldest_idle_seconds or 0.0)
            paused.add_metric([stats.namespace_id], 1.0 if stats.paused else 0.0)
            if stats.namespace_id in limited:
                limits.add_metric([stats.namespace_id], limited[stats.namespace_id])
        yield from (tasks, lag, paused, limits)
        yield from _counters([stats.namespace_id for stats in dashboard.namespaces])

        sweep = SweepRecord.objects.filter(pk=RECLAIM_JOB).first()
        if sweep is not None:
            yield GaugeMetricFamily(
                "taskq_sweeper_last_run_timestamp_seconds",
                "When the lease sweeper last finished a run (unix seconds).",
                value=sweep.finished_at.timestamp(),
            )
            yield GaugeMetricFamily(
                "taskq_sweeper_last_reclaimed",
                "Expired leases the sweeper's last run reclaimed.",
                value=sweep.affected,
            )
        yield CounterMetricFamily(
            "taskq_sweeper_reclaimed",
            "Expired leases the sweeper has reclaimed, in all.",
            value=sweep.affected_total if sweep is not None else 0,
        )


def _counters(namespace_ids: list[str]) -> Iterator[Any]:
    """The counters of every namespace: 0 before its first event, so that a
    rate over the first one is seen."""
    captured = CounterMetricFamily(
        "taskq_tasks_captured",
        "Tasks leased by captures, per namespace.",
        labels=["namespace"],
    )
    finished = CounterMetricFamily(
        "taskq_tasks_finished",
        "Leases ended per namespace: done or failed by their holder (or an operator), or expired.",
        labels=["namespace", "outcome"],
    )
    with connection.cursor() as cursor:
        cursor.execute(lease.THROUGHPUT_TOTALS)
        totals = {row[0]: row[1:] for row in cursor.fetchall()}
    for namespace_id in namespace_ids:
        n_captured, done, failed, expired = totals.get(namespace_id, (0, 0, 0, 0))
        captured.add_metric([namespace_id], n_captured)
        finished.add_metric([namespace_id, "done"], done)
        finished.add_metric([namespace_id, "failed"], failed)
        finished.add_metric([namespace_id, "expired"], expired)
    yield from (captured, finished)
