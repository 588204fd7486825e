"""GET /metrics: the Prometheus text format, computed from the database."""

import pytest
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from namespaces_app.models import Namespace
from tasks_app.services import capture_tasks, pause_namespace
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
    from tasks_app.sweeper import reclaim_expired_leases

    assert not any(name.startswith("taskq_sweeper") for name, _ in scrape(client))
    reclaim_expired_leases()
    samples = scrape(client)
    assert samples[("taskq_sweeper_last_run_timestamp_seconds", ())] > 1.7e9
    assert samples[("taskq_sweeper_last_reclaimed", ())] == 0.0


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
