"""The operators' side of payloads, results, errors, delays, priorities, the
attempt history and namespace settings: the dashboard's Scheduled column and
queue lag, the task list's filters and columns, a task's page, the requeue of
a scheduled task, and the namespace settings form."""

import html
import re
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from namespaces_app import admin as namespace_admin
from namespaces_app import serializers as namespace_serializers
from namespaces_app.models import Namespace
from namespaces_app.services import Settings, change_namespace, register_namespace
from tasks_app import dashboard
from tasks_app.lease import CATEGORY
from tasks_app.models import Task
from tasks_app.services import (
    Lease,
    NewTask,
    Outcome,
    capture_tasks,
    register_tasks,
    release_tasks,
)
from tests.factories import age_task, make_namespace, make_task, make_tasks

pytestmark = pytest.mark.django_db

TASKS = "/admin/tasks_app/task/"
NAMESPACES = "/admin/namespaces_app/namespace/"
SCRIPT_PAYLOAD = {"note": "</pre><script>alert(1)</script>", "items": [1, 2]}


def dashboard_cell(page: str, namespace: str, column: str) -> str:
    row = re.search(rf'<tr class="health-\w+" data-namespace="{namespace}">(.*?)</tr>', page, re.S)
    assert row, f"no row for {namespace}"
    found = re.search(rf'data-category="{column}">\s*(.*?)\s*</td>', row.group(1), re.S)
    assert found, f"no {column} cell"
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def dashboard_lag(page: str, namespace: str) -> str:
    row = re.search(rf'<tr class="health-\w+" data-namespace="{namespace}">(.*?)</tr>', page, re.S)
    assert row, f"no row for {namespace}"
    cells = re.findall(r'<td class="num">(.*?)</td>', row.group(1), re.S)
    return cells[-1].strip()  # the last plain number: "Oldest idle"


def listed_ids(response) -> list[str]:
    return [str(obj.pk) for obj in response.context["cl"].result_list]


def explain(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def delayed(namespace: str, count: int, *, prefix: str, seconds: float = 3600) -> None:
    register_tasks(
        tasks=[
            NewTask(id=f"{prefix}{i:06d}", namespace_id=namespace, delay=seconds)
            for i in range(count)
        ]
    )


# --- The dashboard ------------------------------------------------------------------


def test_the_dashboard_counts_scheduled_tasks_in_their_own_column(admin_client: Client):
    make_namespace("ns")
    make_tasks("ns", 3, prefix="now-")
    delayed("ns", 4, prefix="later-")
    page = admin_client.get("/admin/").content.decode()
    assert '<th scope="col" class="num">Scheduled</th>' in page
    assert dashboard_cell(page, "ns", "scheduled") == "4"
    assert dashboard_cell(page, "ns", "idle") == "3"
    assert "/admin/tasks_app/task/?namespace__id__exact=ns&amp;state=scheduled" in page


def test_a_scheduled_task_is_counted_idle_once_its_turn_comes(admin_client: Client, clock):
    make_namespace("ns")
    delayed("ns", 2, prefix="later-", seconds=60)
    page = admin_client.get("/admin/").content.decode()
    assert (dashboard_cell(page, "ns", "scheduled"), dashboard_cell(page, "ns", "idle")) == (
        "2",
        "0",
    )
    clock.advance(60)
    page = admin_client.get("/admin/").content.decode()
    assert (dashboard_cell(page, "ns", "scheduled"), dashboard_cell(page, "ns", "idle")) == (
        "0",
        "2",
    )


def test_scheduled_tasks_are_not_queue_lag(admin_client: Client):
    make_namespace("waiting")
    make_namespace("only-later")
    make_task("old", "waiting")
    age_task("old", 3 * 3600)
    # Registered long ago, their turn a day away: not late.
    delayed("waiting", 2, prefix="w-later-", seconds=86400)
    delayed("only-later", 3, prefix="o-later-", seconds=86400)
    for task_id in ("w-later-000000", "o-later-000000"):
        age_task(task_id, 3 * 3600)
    page = admin_client.get("/admin/").content.decode()
    assert dashboard_lag(page, "waiting") == "3.0 h"
    assert dashboard_lag(page, "only-later") == "—"
    assert '<tr class="health-ok" data-namespace="only-later">' in page


def test_the_oldest_idle_task_is_found_whatever_its_priority(db):
    make_namespace("ns")
    register_tasks(
        tasks=[
            NewTask(id="urgent", namespace_id="ns", priority=0),
            NewTask(id="low", namespace_id="ns", priority=9),
        ]
    )
    age_task("low", 600)
    (stats,) = dashboard.build_dashboard().namespaces
    assert stats.oldest_idle_seconds is not None
    assert 600 <= stats.oldest_idle_seconds < 700


@pytest.fixture
def a_large_queue(db):
    """Many done tasks beside the queue, as the table of a service in use holds."""
    for namespace in ("ns", "other"):
        make_namespace(namespace)
        make_tasks(namespace, 10_000, prefix=f"{namespace}-done-", status="done")
        delayed(namespace, 1_500, prefix=f"{namespace}-later-")
        make_tasks(namespace, 500, prefix=f"{namespace}-now-")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_task")


def test_the_scheduled_count_is_one_scan_of_the_capture_index(a_large_queue):
    for category in ("scheduled", "idle"):
        where = dashboard._CATEGORY_WHERE[category]
        for sql in (
            dashboard.COUNT_BY_NAMESPACE.format(where=where),
            f"SELECT count(*) FROM tasks_app_task WHERE namespace_id = 'ns' AND {where}",
        ):
            plan = explain(sql)
            # An index-only scan once vacuum has marked the pages all-visible.
            assert "Scan using task_capture_priority_idx" in plan or (
                "Bitmap Index Scan on task_capture_priority_idx" in plan
            ), plan
            assert "Seq Scan" not in plan, plan


def test_queue_lag_reads_one_bounded_range_per_priority_level(a_large_queue):
    plan = explain(dashboard.OLDEST_IDLE)
    assert "Function Scan on generate_series p" in plan, plan
    assert "Scan using task_capture_priority_idx on tasks_app_task t" in plan, plan
    # The range ends at the clock, so the scheduled tasks beyond it are never read.
    assert "(priority = p.priority) AND (available_at <= " in plan, plan
    assert "Sort" not in plan, plan
    assert "Seq Scan on tasks_app_task" not in plan, plan


def test_the_scheduled_estimate_is_close_despite_the_done_tasks(a_large_queue):
    """The planner alone takes "idle" and "turn to come" as independent, and
    the done tasks, which have no turn, would make it guess a sixth."""
    estimator = dashboard._Estimator()
    for category, exact in (("scheduled", 3_000), ("idle", 1_000), ("done", 20_000)):
        assert 0.8 * exact <= estimator.rows(category) <= 1.25 * exact, category
    for namespace in ("ns", "other"):
        assert 0.8 * 1_500 <= estimator.rows("scheduled", namespace) <= 1.25 * 1_500


def test_a_large_scheduled_count_is_shown_as_an_estimate(admin_client, a_large_queue, monkeypatch):
    monkeypatch.setattr(dashboard, "EXACT_COUNT_LIMIT", 1_000)
    page = admin_client.get("/admin/").content.decode()
    for namespace in ("ns", "other"):
        shown = dashboard_cell(page, namespace, "scheduled")
        assert shown.startswith("≈"), shown
        assert 0.8 * 1_500 <= int(shown.removeprefix("≈")) <= 1.25 * 1_500
        assert dashboard_cell(page, namespace, "idle") == "500"


# --- The task list ------------------------------------------------------------------


@pytest.fixture
def mixed(db):
    make_namespace("ns")
    register_tasks(
        tasks=[
            NewTask(id="urgent", namespace_id="ns", priority=0),
            NewTask(id="p3-now", namespace_id="ns", priority=3),
            NewTask(id="p3-later", namespace_id="ns", priority=3, delay=3600),
            NewTask(id="later", namespace_id="ns", delay=7200),
            NewTask(id="finished", namespace_id="ns", status="done", priority=3),
        ]
    )


def test_the_task_list_shows_priority_and_available_at(admin_client, mixed):
    response = admin_client.get(TASKS)
    page = response.content.decode()
    assert "Priority" in page
    assert "Available at" in page
    later = Task.objects.get(pk="later")
    assert later.available_at is not None
    row = re.search(r"<tr>(?:(?!</tr>).)*/task/later/change/(?:(?!</tr>).)*</tr>", page, re.S)
    assert row, "no row for the task 'later'"
    assert later.available_at.strftime("%Y-%m-%d %H:%M:%S") in row.group(0)
    assert '<strong class="taskq-scheduled">scheduled</strong>' in row.group(0)
    # A task whose turn has come, and one with no turn, are not marked.
    assert page.count('class="taskq-scheduled"') == 2
    assert "taskq/task_admin.css" in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=scheduled", {"p3-later", "later"}),
        ("state=idle", {"urgent", "p3-now"}),
        ("priority=3", {"p3-now", "p3-later", "finished"}),
        ("priority=0", {"urgent", "later"}),
        ("priority=3&state=scheduled", {"p3-later"}),
        ("priority=9", set()),
    ],
)
def test_the_task_list_filters_by_state_and_priority(admin_client, mixed, query, expected):
    assert set(listed_ids(admin_client.get(f"{TASKS}?{query}"))) == expected


def test_the_sidebar_offers_every_priority_level_and_the_scheduled_state(admin_client, mixed):
    page = admin_client.get(TASKS).content.decode()
    for level in range(10):
        assert f'href="?priority={level}"' in page
    assert 'href="?state=scheduled"' in page
    assert ">Scheduled</a>" in page


# --- A task's page ------------------------------------------------------------------


@pytest.fixture
def worked(db):
    """A task with a payload that failed once, then was done, beside one in
    progress; the namespace keeps every attempt."""
    register_namespace(namespace_id="ns", settings=Settings({"history": "all"}))
    register_tasks(tasks=[NewTask(id="job", namespace_id="ns", payload=SCRIPT_PAYLOAD)])
    (first,) = capture_tasks(namespace_id="ns", limit=1, holder="worker-a")
    release_tasks(
        status="failed",
        leases=[Lease(first.id, first.lease_token)],
        outcomes={"job": Outcome(error={"message": "<b>boom</b>", "code": 7})},
    )
    (second,) = capture_tasks(namespace_id="ns", limit=1, holder="worker-b")
    release_tasks(
        status="done",
        leases=[Lease(second.id, second.lease_token)],
        outcomes={"job": Outcome(result={"rows": 2, "ok": True})},
    )
    make_task("running", "ns")
    capture_tasks(namespace_id="ns", limit=1, holder="worker-c")


def test_the_task_page_pretty_prints_the_payload_escaped(admin_client, worked):
    page = admin_client.get(f"{TASKS}job/change/").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "</pre><script>" not in page
    pretty = html.escape(
        '{\n  "items": [\n    1,\n    2\n  ],\n  "note": "</pre><script>alert(1)</script>"\n}'
    )
    assert f'<pre class="taskq-json">{pretty}</pre>' in page


def test_the_task_page_shows_the_result_and_the_last_error(admin_client, worked):
    page = admin_client.get(f"{TASKS}job/change/").content.decode()
    result = html.escape('{\n  "ok": true,\n  "rows": 2\n}')
    error = html.escape('{\n  "code": 7,\n  "message": "<b>boom</b>"\n}')
    assert f'<div class="readonly"><pre class="taskq-json">{result}</pre></div>' in page
    assert f'<div class="readonly"><pre class="taskq-json">{error}</pre></div>' in page
    assert "<b>boom</b>" not in page


def attempt_rows(page: str) -> list[list[str]]:
    table = re.search(r'<table class="taskq-attempts">(.*?)</table>', page, re.S)
    assert table, "no attempts table"
    rows = re.findall(r"<tr class=\"outcome-\w+\" data-attempt=\"\d+\">(.*?)</tr>", table[1], re.S)
    return [
        [re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", c))).strip() for c in cells]
        for cells in (re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows)
    ]


def test_the_task_page_lists_the_attempts_newest_first(admin_client, worked):
    page = admin_client.get(f"{TASKS}job/change/").content.decode()
    rows = attempt_rows(page)
    assert [(r[0], r[3], r[5]) for r in rows] == [
        ("2", "done", "worker-b"),
        ("1", "failed", "worker-a"),
    ]
    assert rows[0][4] == '{ "ok": true, "rows": 2 }'
    assert rows[1][4] == '{ "code": 7, "message": "<b>boom</b>" }'
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", r[1]) for r in rows)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", r[2]) for r in rows)


def test_the_lease_in_progress_heads_the_attempts(admin_client, worked):
    page = admin_client.get(f"{TASKS}running/change/").content.decode()
    ((attempt, captured, ended, outcome, detail, token),) = attempt_rows(page)
    assert (attempt, ended, outcome, detail, token) == ("1", "—", "in progress", "—", "worker-c")
    assert captured != "—"


def test_a_task_never_captured_has_no_attempts_and_no_payload(admin_client, db):
    make_namespace("ns")
    make_task("fresh", "ns")
    page = admin_client.get(f"{TASKS}fresh/change/").content.decode()
    assert "None recorded." in page
    assert '<pre class="taskq-json">' not in page


# --- Requeue of a scheduled task ----------------------------------------------------


def post_action(client: Client, action: str, ids: list[str], **extra: str):
    data = {"action": action, "_selected_action": ids, "select_across": "0", "index": "0"}
    return client.post(TASKS, {**data, **extra}, follow=True)


def test_requeue_says_it_brings_scheduled_tasks_forward(admin_client, mixed):
    choices = admin_client.get(TASKS).content.decode()
    assert "Requeue selected tasks (brings scheduled ones forward)" in choices

    page = post_action(admin_client, "requeue", ["later", "p3-later", "finished"])
    text = re.sub(r"\s+", " ", page.content.decode())
    assert "Requeue <strong>3</strong> tasks." in text
    assert "2 are scheduled: requeue brings them forward, their delay dropped." in text
    assert "scheduled tasks are brought forward" in text
    assert Task.objects.filter(CATEGORY["scheduled"].q).count() == 2  # nothing yet

    done = post_action(admin_client, "requeue", ["later", "p3-later", "finished"], confirm="yes")
    assert "Requeue: 3 changed." in done.content.decode()
    assert not Task.objects.filter(CATEGORY["scheduled"].q).exists()
    assert set(Task.objects.filter(CATEGORY["idle"].q).values_list("id", flat=True)) == {
        "urgent",
        "p3-now",
        "p3-later",
        "later",
        "finished",
    }


def test_the_confirmation_of_a_requeue_without_scheduled_tasks_does_not_mention_them(
    admin_client, mixed
):
    page = post_action(admin_client, "requeue", ["finished"]).content.decode()
    assert 'id="taskq-confirm-scheduled"' not in page


def test_a_requeued_scheduled_task_is_captured_at_once(admin_client, db):
    make_namespace("ns")
    delayed("ns", 1, prefix="later-")
    assert capture_tasks(namespace_id="ns", limit=1) == []
    post_action(admin_client, "requeue", ["later-000000"], confirm="yes")
    assert [row.id for row in capture_tasks(namespace_id="ns", limit=1)] == ["later-000000"]


# --- Namespace settings -------------------------------------------------------------


def form_data(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "default_timeout": "",
        "default_retries": "",
        "backoff_base": "",
        "backoff_max": "",
        "backoff_jitter": "",
        "history": "failures",
        "max_in_flight": "",
    }
    return {**data, **changes}


SETTING_COLUMNS = (
    "default_timeout",
    "default_retries",
    "backoff_base",
    "backoff_max",
    "backoff_jitter",
    "history",
    "max_in_flight",
)


def settings_of(namespace_id: str) -> dict[str, Any]:
    namespace = Namespace.objects.get(pk=namespace_id)
    return {column: getattr(namespace, column) for column in SETTING_COLUMNS}


def test_the_namespace_list_shows_the_settings(admin_client, db):
    register_namespace(namespace_id="plain")
    register_namespace(
        namespace_id="tuned",
        settings=Settings({"default_timeout": 45, "default_retries": 7, "history": "all"}),
    )
    change_namespace(
        namespace_id="tuned",
        settings=Settings(
            {"retry_backoff": namespace_admin.Backoff(base=2.0, max=600.0, jitter=0.25)}
        ),
    )
    page = admin_client.get(NAMESPACES).content.decode()
    assert '<td class="field-default_timeout">45</td>' in page
    assert '<td class="field-default_retries">7</td>' in page
    assert "2 s doubling, at most 600 s, jitter 0.25" in page
    assert "none (retried at once)" in page
    assert '<td class="field-history">All</td>' in page


def test_the_namespace_page_changes_the_settings(admin_client, db):
    make_namespace("ns")
    data = form_data(
        default_timeout="90", default_retries="0", backoff_base="1.5", backoff_jitter="0.5"
    )
    response = admin_client.post(
        f"{NAMESPACES}ns/change/", {**data, "history": "all", "max_in_flight": "4"}
    )
    assert response.status_code == 302, response.content.decode()
    assert settings_of("ns") == {
        "default_timeout": 90,
        "default_retries": 0,
        "backoff_base": 1.5,
        # No maximum given: the API's default.
        "backoff_max": 3600.0,
        "backoff_jitter": 0.5,
        "history": "all",
        "max_in_flight": 4,
    }
    # Cleared again: back to the product's defaults, no backoff.
    response = admin_client.post(f"{NAMESPACES}ns/change/", form_data())
    assert response.status_code == 302
    assert settings_of("ns") == {
        "default_timeout": None,
        "default_retries": None,
        "backoff_base": None,
        "backoff_max": None,
        "backoff_jitter": 0.0,
        "history": "failures",
        "max_in_flight": None,
    }


def test_the_settings_apply_to_tasks_registered_next(admin_client, db):
    make_namespace("ns")
    admin_client.post(
        f"{NAMESPACES}ns/change/", form_data(default_timeout="45", default_retries="1")
    )
    (row,) = register_tasks(tasks=[NewTask(id="t", namespace_id="ns")])
    assert (row.timeout, row.retries_left) == (45, 1)


def test_a_namespace_registered_from_the_admin_takes_its_settings(admin_client, db):
    response = admin_client.post(
        f"{NAMESPACES}add/",
        {
            **form_data(default_timeout="30", backoff_base="5", backoff_max="60"),
            "max_in_flight": "2",
            "id": "new",
        },
    )
    assert response.status_code == 302, response.content.decode()
    assert settings_of("new") == {
        "default_timeout": 30,
        "default_retries": None,
        "backoff_base": 5.0,
        "backoff_max": 60.0,
        "backoff_jitter": 0.0,
        "history": "failures",
        "max_in_flight": 2,
    }


def test_the_namespace_page_shows_the_settings_for_editing(admin_client, db):
    register_namespace(namespace_id="ns", settings=Settings({"default_retries": 4}))
    page = admin_client.get(f"{NAMESPACES}ns/change/").content.decode()
    assert re.search(r'<input[^>]*name="default_retries"[^>]*value="4"', page)
    for name in ("default_timeout", "backoff_base", "backoff_max", "backoff_jitter"):
        assert f'name="{name}"' in page
    assert '<option value="failures" selected>' in page
    for heading in ("Defaults for new tasks", "Retry backoff", "Attempt history"):
        assert heading in page


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"default_timeout": "0"}, "default_timeout", "greater than or equal to 1"),
        ({"default_timeout": "2147483648"}, "default_timeout", "less than or equal to"),
        ({"default_timeout": "1.5"}, "default_timeout", "Enter a whole number"),
        ({"default_retries": "-1"}, "default_retries", "greater than or equal to 0"),
        ({"backoff_base": "0"}, "backoff_base", "greater than or equal to 0.001"),
        ({"backoff_base": "-2"}, "backoff_base", "greater than or equal to 0.001"),
        ({"backoff_base": "nan"}, "backoff_base", "Enter a number"),
        ({"backoff_base": "1e9"}, "backoff_base", "less than or equal to"),
        ({"backoff_base": "10", "backoff_max": "5"}, "backoff_max", "at least the base (10 s)"),
        ({"backoff_max": "60"}, "backoff_max", "A maximum needs a base"),
        ({"backoff_jitter": "0.5"}, "backoff_jitter", "Jitter needs a base"),
        (
            {"backoff_base": "1", "backoff_jitter": "1.5"},
            "backoff_jitter",
            "less than or equal to 1",
        ),
        (
            {"backoff_base": "1", "backoff_jitter": "-0.1"},
            "backoff_jitter",
            "greater than or equal",
        ),
        ({"history": "everything"}, "history", "Select a valid choice"),
        ({"max_in_flight": "0"}, "max_in_flight", "greater than or equal to 1"),
    ],
)
def test_the_namespace_settings_form_refuses_what_the_api_refuses(
    admin_client, db, changes, field, message
):
    register_namespace(namespace_id="ns", settings=Settings({"default_timeout": 60}))
    before = settings_of("ns")
    response = admin_client.post(f"{NAMESPACES}ns/change/", form_data(**changes))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field], errors
    assert message in " ".join(errors[field])
    assert "errornote" in response.content.decode()
    assert settings_of("ns") == before


def test_a_bad_setting_refuses_the_registration_too(admin_client, db):
    response = admin_client.post(
        f"{NAMESPACES}add/", {**form_data(backoff_base="10", backoff_max="1"), "id": "new"}
    )
    assert response.status_code == 200
    assert "at least the base" in response.content.decode()
    assert not Namespace.objects.filter(pk="new").exists()


def bounds(field: Any) -> tuple[Any, Any]:
    return field.min_value, field.max_value


def test_the_form_bounds_are_the_apis():
    api = namespace_serializers.NamespaceSettingsSerializer().fields
    backoff = namespace_serializers.BackoffSerializer().fields
    form = namespace_admin.NamespaceForm.base_fields
    for name in ("default_timeout", "default_retries", "max_in_flight"):
        assert bounds(form[name]) == bounds(api[name])
    for name, api_name in (
        ("backoff_base", "base"),
        ("backoff_max", "max"),
        ("backoff_jitter", "jitter"),
    ):
        assert bounds(form[name]) == bounds(backoff[api_name])
    history: Any = form["history"]
    assert {value for value, _ in history.choices} == set(api["history"].choices)  # type: ignore[attr-defined]


def test_a_form_that_changes_one_setting_leaves_the_others_alone(db):
    register_namespace(namespace_id="ns", settings=Settings({"history": "all"}))
    namespace = Namespace.objects.get(pk="ns")
    form = namespace_admin.NamespaceForm(
        data={**form_data(default_timeout="20", backoff_jitter="0", history="all"), "id": "ns"},
        instance=namespace,
    )
    assert form.is_valid(), form.errors
    assert form.settings(changed_only=True) == Settings({"default_timeout": 20})
