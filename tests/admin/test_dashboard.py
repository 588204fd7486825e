"""The dashboard on the admin index."""

import re
from datetime import UTC, datetime

import pytest
from django.test import Client

from tasks_app import dashboard
from tasks_app.charts import throughput_chart
from tasks_app.services import capture_tasks, delete_task, release_tasks
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


def ended(html: str, namespace: str) -> str:
    row = re.search(rf'<tr class="health-\w+" data-namespace="{namespace}">(.*?)</tr>', html, re.S)
    assert row, f"no row for {namespace}"
    found = re.search(r'data-ended="([^"]*)"', row.group(1))
    assert found
    return found.group(1)


def test_dashboard_shows_the_leases_ended_in_the_last_hour_as_svg(admin_client, populated):
    reclaim_expired_leases()  # the 3 expired leases
    html = admin_client.get("/admin/").content.decode()
    assert '<svg class="taskq-chart"' in html
    # Released done, released failed, and run out: each counted apart.
    assert "last hour: 4 done, 1 failed, 3 expired" in html
    assert ended(html, "alpha") == "4 1 3"
    assert ended(html, "beta") == "0 0 0"


def test_the_last_hour_is_labelled_as_events_not_as_a_part_of_the_done_column(admin_client, db):
    make_namespace("ns")
    make_tasks("ns", 2, prefix="t")
    capture_tasks(namespace_id="ns", limit=2)
    release_tasks(task_ids=["t000000", "t000001"], status="done")
    delete_task(task_id="t000000")
    html = admin_client.get("/admin/").content.decode()
    # One task is done now, two were released done in the last hour.
    assert cell(html, "ns", "done") == "1"
    assert ended(html, "ns") == "2 0 0"
    assert ">Leases ended, last hour</abbr>" in html
    assert "a task since deleted or requeued still counts" in html
    assert "it is not a part of the Done column" in html


def test_the_chart_labels_its_time_axis_every_ten_minutes():
    start = datetime(2026, 12, 1, 12, 3, tzinfo=UTC)
    svg = str(throughput_chart([1] * 60, [0] * 60, expired=[2] * 60, start=start))
    labels = re.findall(r'class="axis">([^<]+)</text>', svg)
    # 12:03 to 13:02: the round ten minutes, then "now"; 13:00 is too close
    # to "now" to be printed beside it.
    assert [label for label in labels if ":" in label] == [
        "12:10",
        "12:20",
        "12:30",
        "12:40",
        "12:50",
    ]
    assert "now" in labels
    assert "per minute, times in UTC" in labels
    # The count axis: 0, half the peak and the peak.
    assert {"0", "1", "2"} <= set(labels)
    assert svg.count("<polyline") == 3


def test_the_dashboard_chart_starts_where_the_window_starts(admin_client, populated):
    html = admin_client.get("/admin/").content.decode()
    start = dashboard.build_dashboard().chart_start
    assert f"from {start:%H:%M} UTC" in html


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


def test_a_namespace_on_the_dashboard_links_to_its_page(admin_client, populated):
    html = admin_client.get("/admin/").content.decode()
    assert (
        '<th scope="row"><a href="/admin/namespaces_app/namespace/alpha/change/">alpha</a>' in html
    )


def test_staff_who_may_not_see_namespaces_get_the_tasks_link_instead(db, populated):
    client = Client()
    client.force_login(staff_with("tasks_app.view_task"))
    html = client.get("/admin/").content.decode()
    assert '<th scope="row"><a href="/admin/tasks_app/task/?namespace__id__exact=alpha">' in html


# --- The home page --------------------------------------------------------------


def app_list(html: str) -> str:
    """The index's list of models, without the superusers' line under it."""
    start = html.index('<div id="content-main">')
    ends = [html.find(mark, start) for mark in ('id="taskq-hidden-links"', 'id="content-related"')]
    return html[start : min(end for end in ends if end != -1)]


def test_the_home_page_lists_what_an_operator_works_with(admin_client):
    html = admin_client.get("/admin/").content.decode()
    models = app_list(html)
    for page in ("apikeys_app/apitoken", "auth/user", "namespaces_app/namespace", "tasks_app/task"):
        assert f'href="/admin/{page}/"' in models
    # Groups and django-axes' records are kept off it.
    assert "/admin/auth/group/" not in models
    assert "/admin/axes/" not in models
    assert "Axes" not in models


def test_the_hidden_pages_stay_reachable_for_superusers(admin_client):
    html = admin_client.get("/admin/").content.decode()
    hidden = re.search(r'<p id="taskq-hidden-links"[^>]*>(.*?)</p>', html, re.S)
    assert hidden
    for page in ("auth/group", "axes/accessattempt", "axes/accesslog", "axes/accessfailurelog"):
        assert f'href="/admin/{page}/"' in hidden.group(1)
        assert admin_client.get(f"/admin/{page}/").status_code == 200
    assert admin_client.get("/admin/axes/").status_code == 200


def test_staff_who_are_not_superusers_see_no_hidden_pages(db):
    client = Client()
    client.force_login(staff_with("tasks_app.view_task", "auth.view_group"))
    html = client.get("/admin/").content.decode()
    assert 'id="taskq-hidden-links"' not in html
    assert "/admin/auth/group/" not in html


def test_no_page_has_the_navigation_sidebar(admin_client, populated):
    # It squeezed the task list between itself and the filters.
    for page in ("/admin/tasks_app/task/", "/admin/namespaces_app/namespace/alpha/change/"):
        html = admin_client.get(page).content.decode()
        assert 'id="nav-sidebar"' not in html
        assert "nav_sidebar.js" not in html
