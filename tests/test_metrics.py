"""GET /metrics: the Prometheus text format, computed from the database."""

import pytest
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from namespaces_app.models import Namespace
from namespaces_app.services import delete_namespace
from tasks_app import dashboard, metrics
from tasks_app.models import SweepRecord, Throughput, ThroughputTotal
from tasks_app.services import capture_tasks, pause_namespace, purge_namespace, release_tasks
from tasks_app.sweeper import RECLAIM_JOB, reclaim_expired_leases
from tests.factories import make_namespace, make_tasks

pytestmark = pytest.mark.django_db


def scrape(client: Client, token: str | None = None) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"} if token else None)
    assert r.status_code == 200, r.content
    assert r["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(r.content.decode())
        for sample in family.samples
    }


def test_the_tasks_of_every_namespace_by_state(client, clock):
    make_namespace("a")
    make_namespace("b")
    make_tasks("a", 3)
    make_tasks("a", 2, prefix="gone-", status="failed", retries_left=0)
    make_tasks("b", 1, prefix="b-", status="done")
    capture_tasks(namespace_id="a", limit=1)
    pause_namespace(namespace_id="b")
    clock.advance(7)

    samples = scrape(client)

    def tasks(namespace: str, state: str) -> float:
        return samples[("taskq_tasks", (("namespace", namespace), ("state", state)))]

    assert (tasks("a", "idle"), tasks("a", "in_progress"), tasks("a", "failed_final")) == (2, 1, 2)
    assert (tasks("b", "done"), tasks("b", "idle"), tasks("a", "lease_expired")) == (1, 0, 0)
    states = {labels[1][1] for name, labels in samples if name == "taskq_tasks"}
    assert states == {
        "idle",
        "scheduled",
        "in_progress",
        "lease_expired",
        "done",
        "failed_retry",
        "failed_final",
    }
    # Registered on the frozen clock seven seconds ago (registration stamps
    # a batch's tasks a microsecond apart, to keep their order).
    assert samples[("taskq_oldest_idle_age_seconds", (("namespace", "a"),))] == pytest.approx(
        7.0, abs=1e-5
    )
    assert samples[("taskq_oldest_idle_age_seconds", (("namespace", "b"),))] == 0.0
    assert samples[("taskq_namespace_paused", (("namespace", "b"),))] == 1.0
    assert samples[("taskq_namespace_paused", (("namespace", "a"),))] == 0.0
    assert ("taskq_namespace_max_in_flight", (("namespace", "a"),)) not in samples


def test_the_sweepers_last_run(client):
    before = scrape(client)
    assert "taskq_sweeper_last_run_timestamp_seconds" not in {name for name, _ in before}
    assert before[("taskq_sweeper_reclaimed_total", ())] == 0.0
    reclaim_expired_leases()
    finished = SweepRecord.objects.get(pk=RECLAIM_JOB).finished_at.timestamp()
    samples = scrape(client)
    assert samples[("taskq_sweeper_last_run_timestamp_seconds", ())] == finished
    assert samples[("taskq_sweeper_last_reclaimed", ())] == 0.0


def test_the_sweepers_reclaimed_total_adds_up_every_run(client, clock):
    make_namespace("ns")
    make_tasks("ns", 5, timeout=10)
    capture_tasks(namespace_id="ns", limit=2)
    clock.advance(11)
    reclaim_expired_leases()
    capture_tasks(namespace_id="ns", limit=3)
    clock.advance(11)
    reclaim_expired_leases()
    samples = scrape(client)
    assert samples[("taskq_sweeper_last_reclaimed", ())] == 3.0
    assert samples[("taskq_sweeper_reclaimed_total", ())] == 5.0
    # Deleting the namespace takes its tasks' counts, never the sweeper's.
    Namespace.objects.filter(pk="ns").delete()
    assert scrape(client)[("taskq_sweeper_reclaimed_total", ())] == 5.0


def counters(samples: dict[tuple[str, tuple], float], namespace: str) -> dict[str, float]:
    figures = {"captured": samples[("taskq_tasks_captured_total", (("namespace", namespace),))]}
    for outcome in ("done", "failed", "expired"):
        labels = (("namespace", namespace), ("outcome", outcome))
        figures[outcome] = samples[("taskq_tasks_finished_total", labels)]
    return figures


def test_counters_count_captures_and_each_way_a_lease_ends(client, clock):
    make_namespace("ns")
    make_namespace("quiet")
    make_tasks("ns", 6, timeout=10)
    assert counters(scrape(client), "quiet") == dict(captured=0, done=0, failed=0, expired=0)

    capture_tasks(namespace_id="ns", limit=3)
    capture_tasks(namespace_id="ns", limit=1)
    release_tasks(status="done", task_ids=["t000000", "t000001"])
    release_tasks(status="failed", task_ids=["t000002"])
    # Handed back: not an end of the task's work, not counted as one.
    release_tasks(status="idle", task_ids=["t000003"])
    capture_tasks(namespace_id="ns", limit=1)  # t000003 again
    assert counters(scrape(client), "ns") == dict(captured=5, done=2, failed=1, expired=0)

    clock.advance(11)
    # One lease taken over by the capture that finds it expired (t000003),
    # then the sweeper's: the new leases, once they run out too.
    rows = capture_tasks(namespace_id="ns", limit=10)
    assert len(rows) == 4
    assert counters(scrape(client), "ns") == dict(captured=9, done=2, failed=1, expired=1)
    clock.advance(11)
    reclaim_expired_leases()
    assert counters(scrape(client), "ns") == dict(captured=9, done=2, failed=1, expired=5)
    assert counters(scrape(client), "quiet") == dict(captured=0, done=0, failed=0, expired=0)


def test_counters_keep_their_values_as_the_sweeper_compacts_and_folds_the_log(client, clock):
    make_namespace("ns")
    make_namespace("other")
    make_tasks("ns", 40, timeout=3600)
    make_tasks("other", 3, prefix="o", timeout=3600)
    for _ in range(10):
        rows = capture_tasks(namespace_id="ns", limit=2)
        release_tasks(status="done", task_ids=[rows[0].id])
        release_tasks(status="failed", task_ids=[rows[1].id])
        clock.advance(7)
    capture_tasks(namespace_id="other", limit=3)
    expected = dict(captured=20, done=10, failed=10, expired=0)
    assert counters(scrape(client), "ns") == expected
    assert Throughput.objects.filter(namespace_id="ns").count() == 30

    # Rows more than a few seconds old become a row per namespace and
    # minute, the current minute's too; the last seconds' stay as written.
    clock.advance(3)  # the last round's rows are 10 s old, the newest 3 s
    rows = capture_tasks(namespace_id="ns", limit=2)
    clock.advance(3)
    reclaim_expired_leases()
    expected = dict(captured=22, done=10, failed=10, expired=0)
    assert counters(scrape(client), "ns") == expected
    stamps = list(Throughput.objects.filter(namespace_id="ns").values_list("at", flat=True))
    raw = [at for at in stamps if (at.second, at.microsecond) != (0, 0)]
    assert len(raw) == 1 and len(stamps) <= 4 < 31
    release_tasks(status="done", task_ids=[rows[0].id])
    release_tasks(status="failed", task_ids=[rows[1].id])
    expected = dict(captured=22, done=11, failed=11, expired=0)

    # A minute compacted before is merged with its later rows.
    clock.advance(60)
    reclaim_expired_leases()
    assert counters(scrape(client), "ns") == expected
    minutes = Throughput.objects.filter(namespace_id="ns").values_list("at", flat=True)
    assert all(at.second == 0 and at.microsecond == 0 for at in minutes)
    assert len(minutes) == len(set(minutes)) <= 3
    assert not ThroughputTotal.objects.exists()

    # Past two hours, rows go into the running totals.
    clock.advance(2 * 3600)
    reclaim_expired_leases()
    assert not Throughput.objects.filter(namespace_id="ns").exists()
    assert ThroughputTotal.objects.get(pk="ns").done == 11
    assert counters(scrape(client), "ns") == expected
    assert counters(scrape(client), "other")["captured"] == 3

    rows = capture_tasks(namespace_id="ns", limit=1)
    release_tasks(status="done", task_ids=[rows[0].id])
    assert counters(scrape(client), "ns") == dict(captured=23, done=12, failed=11, expired=0)

    # Deleting the tasks (a purge, the retention) leaves what happened counted.
    assert purge_namespace(namespace_id="ns", states=["done", "failed_retry"])["done"] == 12
    assert counters(scrape(client), "ns") == dict(captured=23, done=12, failed=11, expired=0)

    # A namespace deleted and created again starts from zero, its events of
    # the last two hours included.
    capture_tasks(namespace_id="other", limit=1)
    assert Throughput.objects.filter(namespace_id="other").exists()
    delete_namespace(namespace_id="other")
    assert not ThroughputTotal.objects.filter(pk="other").exists()
    assert not Throughput.objects.filter(namespace_id="other").exists()
    make_namespace("other")
    assert counters(scrape(client), "other")["captured"] == 0
    assert counters(scrape(client), "ns") == dict(captured=23, done=12, failed=11, expired=0)


def http_count(samples: dict[tuple[str, tuple], float], route: str, code: str) -> float:
    labels = (("code", code), ("method", "GET"), ("route", route))
    return samples.get(("taskq_http_requests_total", labels), 0.0)


def test_http_requests_are_counted_by_url_pattern_never_by_id(client, api, namespace):
    before = scrape(client)
    for task_id in ("first-id", "second-id", "third-id"):
        assert api.get(f"/v1/task/{task_id}").status_code == 204
    api.get("/v1/no-such-endpoint")
    samples = scrape(client)

    assert (
        http_count(samples, "v1/task/{pk}", "204") - http_count(before, "v1/task/{pk}", "204") == 3
    )
    assert http_count(samples, "unmatched", "404") - http_count(before, "unmatched", "404") == 1
    duration = ("taskq_http_request_duration_seconds_count", (("route", "v1/task/{pk}"),))
    assert samples[duration] - before.get(duration, 0.0) == 3
    labels = {value for _, pairs in samples for _, value in pairs}
    assert not any("first-id" in value for value in labels)


@override_settings(TASKQ_METRICS_TOKEN="scrape-secret")
def test_with_a_metrics_token_only_its_bearer_is_answered(client):
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}):
        r = client.get("/metrics", **headers)
        assert r.status_code == 401
        assert "TASKQ_METRICS_TOKEN" in r.json()["detail"]
    make_namespace("ns")
    Namespace.objects.filter(pk="ns").update(max_in_flight=3)
    samples = scrape(client, token="scrape-secret")
    assert samples[("taskq_namespace_paused", (("namespace", "ns"),))] == 0.0
    assert samples[("taskq_namespace_max_in_flight", (("namespace", "ns"),))] == 3.0


def test_a_scrape_reads_a_bounded_part_of_the_done_tasks(client, monkeypatch):
    """Done tasks beyond the scrape's limit are the planner's estimates; the
    work in hand is counted exactly up to the dashboard's own limit."""
    for namespace, done in (("big", 300), ("small", 20)):
        make_namespace(namespace)
        make_tasks(namespace, done, prefix=f"{namespace}-done-", status="done")
        make_tasks(namespace, 40, prefix=f"{namespace}-idle-")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_task")
    monkeypatch.setattr(metrics, "FINISHED_COUNT_LIMIT", 100)
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 1_000)

    with CaptureQueriesContext(connection) as queries:
        samples = scrape(client)

    def tasks(namespace: str, state: str) -> float:
        return samples[("taskq_tasks", (("namespace", namespace), ("state", state)))]

    # The small one counted within the limit, the big one estimated.
    assert tasks("small", "done") == 20
    assert 0.8 * 300 <= tasks("big", "done") <= 1.25 * 300
    assert (tasks("big", "idle"), tasks("small", "idle")) == (40, 40)
    counted = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith("SELECT namespace_id, count(*)")
    ]
    done_counts = [sql for sql in counted if "status = 'done'" in sql]
    assert done_counts and all("namespace_id = ANY" in sql for sql in done_counts)
