"""The Grafana dashboard and the Prometheus rules of docs/monitoring/ stay
true to what `GET /metrics` exposes.

Without promtool (scripts/check_monitoring.sh runs it, in CI): every metric
name their expressions use must be one that a scrape of this taskq answers,
after the API has done a bit of everything.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from tasks_app.sweeper import reclaim_expired_leases
from tests.factories import age_task

MONITORING = Path(__file__).resolve().parent.parent / "docs" / "monitoring"
DASHBOARD = MONITORING / "taskq-dashboard.json"
RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "alerts.test.yml"

# A whole identifier that starts with taskq_ (not a part of a longer one),
# so that `taskq_tasks_total` is never read as `taskq_tasks`.
METRIC = re.compile(r"(?<![A-Za-z0-9_:])taskq_[A-Za-z0-9_:]*")

# The series names that a family of each type is exposed under.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, those inside collapsed rows too."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def dashboard_exprs() -> dict[str, str]:
    """Each query of the dashboard, by where it is: panel targets and the
    template variables' queries."""
    board = dashboard()
    exprs: dict[str, str] = {}
    for panel in panels(board["panels"]):
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no queries"
        for target in targets:
            assert target.get("expr"), f"panel {panel['title']!r}: a target has no expr"
            exprs[f"panel {panel['title']!r} ({target['refId']})"] = target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs[f"variable {variable['name']!r}"] = (
                query["query"] if isinstance(query, dict) else query
            )
            exprs[f"variable {variable['name']!r} (definition)"] = variable.get("definition", "")
    return exprs


def rule_exprs() -> dict[str, str]:
    exprs = {rule.get("alert") or rule["record"]: rule["expr"] for rule in rules()}
    assert exprs, f"{RULES} has no rules"
    return exprs


def exposed_names(exposition: str) -> set[str]:
    """The series names of a scrape: those of its samples, and those that each
    family's declared type gives it (a counter no one has counted yet still
    declares its name)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


@pytest.fixture
def scraped(db: None, api: APIClient) -> set[str]:
    """A scrape of /metrics after some of everything: namespaces registered,
    paused and capped, tasks captured, released done and failed, and a lease
    left to expire and reclaimed by the sweeper; all over HTTP, so the HTTP
    figures have routes, methods and codes to show."""

    def ok(response: Any, status: int = 200) -> Any:
        assert response.status_code == status, response.content
        return response

    ok(api.post("/v1/namespace", {"id": "images"}, format="json"), 201)
    ok(api.post("/v1/namespace", {"id": "reports"}, format="json"), 201)
    ok(api.patch("/v1/namespace/images", {"max_in_flight": 10}, format="json"))
    ok(api.post("/v1/namespace/reports/pause"))
    for i in range(5):
        ok(api.post("/v1/task", {"id": f"img-{i}", "namespace_id": "images"}, format="json"), 201)
    ok(api.post("/v1/task", {"id": "rep-0", "namespace_id": "reports"}, format="json"), 201)
    leased = ok(api.post("/v1/task/capture?namespace_id=images&limit=3")).json()["list"]
    assert len(leased) == 3
    done, failed, abandoned = leased
    for task, status in ((done, "done"), (failed, "failed")):
        leases = [{"id": task["id"], "lease_token": task["lease_token"]}]
        ok(api.put("/v1/task/release", {"status": status, "leases": leases}, format="json"))
    ok(api.get("/v1/task/no-such-task"), 204)
    ok(api.get("/v1/no-such-route"), 404)

    age_task(abandoned["id"], 3600)
    assert reclaim_expired_leases().reclaimed == 1

    response = ok(Client().get("/metrics"))
    return exposed_names(response.content.decode())


def test_the_dashboard_uses_only_metrics_that_taskq_exposes(scraped: set[str]) -> None:
    used = {
        name: where for where, expr in dashboard_exprs().items() for name in METRIC.findall(expr)
    }
    assert "taskq_tasks" in used
    missing = {name: where for name, where in used.items() if name not in scraped}
    assert not missing, f"not exposed by /metrics (metric: where used): {missing}"


def test_the_alert_rules_use_only_metrics_that_taskq_exposes(scraped: set[str]) -> None:
    used = {name: rule for rule, expr in rule_exprs().items() for name in METRIC.findall(expr)}
    assert "taskq_tasks" in used
    missing = {name: rule for name, rule in used.items() if name not in scraped}
    assert not missing, f"not exposed by /metrics (metric: rule using it): {missing}"


def test_the_dashboard_asks_for_a_prometheus_and_namespaces() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    namespace = variables["namespace"]
    assert (namespace["type"], namespace["multi"], namespace["includeAll"]) == ("query", True, True)
    assert namespace["query"]["query"] == "label_values(taskq_tasks, namespace)"
    assert namespace["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # Every query runs on the chosen data source, and every panel about
    # namespaces keeps to the chosen ones.
    for panel in panels(board["panels"]):
        if panel["type"] == "row":
            continue
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        for target in panel["targets"]:
            if "namespace" in target["expr"]:
                assert 'namespace=~"$namespace"' in target["expr"], (panel["title"], target)
    ids = [panel["id"] for panel in panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_alert_has_promtool_tests_where_it_fires_and_where_it_does_not() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires == alerts, f"alerts never shown firing: {alerts - fires}"
    assert silent == alerts, f"alerts never shown silent: {alerts - silent}"
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
