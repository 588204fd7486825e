"""The dashboard's and the metrics' counts read a bounded number of entries:
exact for the smallest namespaces within the budget, estimates beyond it."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tasks_app import dashboard
from tests.factories import make_namespace, make_tasks

pytestmark = pytest.mark.django_db

DONE = {"big": 3_000, "mid": 800, "small": 100, "none": 0}


@pytest.fixture
def namespaces_of_every_size(db):
    for namespace, count in DONE.items():
        make_namespace(namespace)
        if count:
            make_tasks(namespace, count, prefix=f"{namespace}-", status="done")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_task")


def done_counts() -> dict[str, dashboard.Count]:
    return dashboard._counts("done", list(DONE), dashboard._Estimator())


def test_below_the_limit_every_count_is_exact(namespaces_of_every_size):
    counts = done_counts()
    assert {ns: counts.get(ns, dashboard.Count(0)) for ns in DONE} == {
        ns: dashboard.Count(n) for ns, n in DONE.items()
    }


def test_above_the_limit_the_smallest_namespaces_are_counted_within_the_budget(
    namespaces_of_every_size, monkeypatch
):
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 1_000)
    counts = done_counts()
    assert (counts["small"], counts["mid"], counts["none"]) == (
        dashboard.Count(100),
        dashboard.Count(800),
        dashboard.Count(0),
    )
    assert counts["big"].estimated
    assert 0.8 * 3_000 <= counts["big"].value <= 1.25 * 3_000

    # 100 + 800 is over this budget: the middle one is estimated too.
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 850)
    counts = done_counts()
    assert counts["small"] == dashboard.Count(100)
    assert counts["mid"].estimated
    assert 0.8 * 800 <= counts["mid"].value <= 1.25 * 800


def test_the_estimates_of_every_namespace_take_one_statement(namespaces_of_every_size, monkeypatch):
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 1_000)
    with CaptureQueriesContext(connection) as queries:
        done_counts()
    statements = [q["sql"] for q in queries.captured_queries]
    # The overall estimate, every namespace's in one plan, one grouped count.
    assert len(statements) == 3, statements
    assert statements[1].count("UNION ALL") == len(DONE) - 1
