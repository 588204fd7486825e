"""The dashboard on the admin index."""

import re

import pytest
from django.test import Client

from tasks_app import dashboard
from tasks_app.services import capture_tasks, release_tasks
from tasks_app.sweeper import reclaim_expired_leases
from tests.admin.conftest import staff_with
from tests.factories import age_task, make_namespace, make_task, make_tasks


def cell(html: str, namespace: str, category: str) -> str:
    row = re.search(rf'<tr class="health-\w+" data-namespace="{namespace}">(.*?)</tr>', html, re.S)
    assert row, f"no row for {namespace}"
    found = re.search(rf'data-category="{category}">\s*(.*?)\s*</td>', row.group(1), re.S)
    assert found
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


@pytest.fixture
def populated(db):
    make_namespace("alpha")
    make_namespace("beta")
    make_tasks("alpha", 7, prefix="i")
    make_tasks("alpha", 3, prefix="l", retries_left=1)
    capture_tasks(namespace_id="alpha", limit=10)  # the 7 idle + 3 -> all leased
    release_tasks(task_ids=[f"i{i:06d}" for i in range(4)], status="done")
    release_tasks(task_ids=["i000004"], status="failed")
    for i in range(3):
        age_task(f"l{i:06d}", 3600)
    make_task("final", "alpha", status="failed", retries_left=0)
    make_tasks("beta", 5, prefix="b")


def test_dashboard_counts_every_state_per_namespace(admin_client, populated):
    html = admin_client.get("/admin/").content.decode()
    assert cell(html, "alpha", "idle") == "0"
    assert cell(html, "alpha", "in_progress") == "2"  # i000005, i000006
    assert cell(html, "alpha", "expired") == "3"
    assert cell(html, "alpha", "done") == "4"
    assert cell(html, "alpha", "failed_retry") == "1"
    assert cell(html, "alpha", "failed_for_good") == "1"
    assert cell(html, "beta", "idle") == "5"


def test_dashboard_marks_a_stuck_namespace(admin_client, populated):
    html = admin_client.get("/admin/").content.decode()
    assert 'data-namespace="alpha"' in html
    assert '<tr class="health-stuck" data-namespace="alpha">' in html  # expired leases
    assert '<tr class="health-ok" data-namespace="beta">' in html


def test_dashboard_shows_a_paused_namespace_as_paused(admin_client, populated):
    from tasks_app.services import pause_namespace, resume_namespace

    pause_namespace(namespace_id="alpha")
    html = admin_client.get("/admin/").content.decode()
    # Paused comes first, whatever else its figures say (alpha is stuck).
    assert '<tr class="health-paused" data-namespace="alpha">' in html
    assert '<tr class="health-ok" data-namespace="beta">' in html
    resume_namespace(namespace_id="alpha")
    html = admin_client.get("/admin/").content.decode()
    assert '<tr class="health-stuck" data-namespace="alpha">' in html


def test_counts_link_to_the_filtered_task_list(admin_client, populated):
    html = admin_client.get("/admin/").content.decode()
    assert "/admin/tasks_app/task/?namespace__id__exact=alpha&amp;state=expired" in html


def test_dashboard_shows_throughput_of_the_last_hour_as_svg(admin_client, populated):
    reclaim_expired_leases()  # 3 expired leases fail
    html = admin_client.get("/admin/").content.decode()
    assert '<svg class="taskq-chart"' in html
    assert "last hour: 4 done, 4 failed" in html


def test_dashboard_shows_queue_lag(admin_client, db):
    make_namespace("ns")
    make_task("old", "ns")
    age_task("old", 3 * 3600)
    html = admin_client.get("/admin/").content.decode()
    assert "3.0 h" in html


def test_large_counts_are_estimated_and_marked(admin_client, populated, monkeypatch):
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 0)
    html = admin_client.get("/admin/").content.decode()
    assert "Estimated by the query planner" in html
    assert "≈" in cell(html, "beta", "idle")


def test_fragment_is_what_the_page_refreshes(admin_client, populated):
    r = admin_client.get("/admin/dashboard/")
    assert r.status_code == 200
    assert "no-store" in r["Cache-Control"]
    assert 'data-namespace="alpha"' in r.content.decode()
    page = admin_client.get("/admin/").content.decode()
    assert 'data-refresh-url="/admin/dashboard/"' in page
    assert "taskq/dashboard.js" in page


def test_dashboard_needs_a_staff_login(db, populated):
    anonymous = Client()
    assert anonymous.get("/admin/").status_code == 302
    assert anonymous.get("/admin/dashboard/").status_code == 302


def test_staff_without_task_view_permission_sees_no_figures(db, populated):
    client = Client()
    client.force_login(staff_with())
    html = client.get("/admin/").content.decode()
    assert "taskq-dash" not in html
    assert 'data-namespace="alpha"' not in client.get("/admin/dashboard/").content.decode()


def test_dashboard_with_no_namespaces_says_how_to_start(admin_client):
    assert "No namespaces yet" in admin_client.get("/admin/").content.decode()
