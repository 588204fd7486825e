"""The task admin: list, filters, search, read-only form, actions and permissions."""

import re

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client

from tasks_app.models import Task
from tasks_app.services import capture_tasks
from tests.admin.conftest import save_buttons, staff_with
from tests.factories import age_task, make_namespace, make_task, make_tasks, task_state

URL = "/admin/tasks_app/task/"
# Every time the admin shows: to the second, with its zone, which a no-break
# space joins to it.
TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\xa0UTC"


@pytest.fixture
def tasks(db):
    make_namespace("ns")
    make_namespace("other")
    make_tasks("ns", 5, prefix="idle")
    make_tasks("ns", 4, prefix="final", status="failed", retries_left=0)
    make_tasks("other", 3, prefix="o", status="failed", retries_left=0)
    make_task("leased", "ns")
    capture_tasks(namespace_id="ns", limit=1)  # leases idle000000 (FIFO)
    make_task("late", "ns", retries_left=1)
    capture_tasks(namespace_id="ns", limit=10)  # every idle task, "leased" and "late"
    age_task("late", 3600)


def post_action(client, action, ids=(), query="", select_across=False, **extra):
    data = {
        "action": action,
        "_selected_action": list(ids),
        "select_across": "1" if select_across else "0",
        "index": "0",
        **extra,
    }
    return client.post(URL + query, data, follow=True)


def listed_ids(response) -> list[str]:
    return [str(obj.pk) for obj in response.context["cl"].result_list]


def test_task_list_shows_the_operator_columns(admin_client, tasks):
    r = admin_client.get(URL)
    assert r.status_code == 200
    html = r.content.decode()
    for header in ("Id", "Namespace", "Status", "Retries left", "Attempt", "Updated at"):
        assert header in html
    assert "Available at / lease end" in html
    assert '<strong class="taskq-expired">expired</strong>' in html  # the late task's lease


def row_of(html: str, task_id: str) -> str:
    found = re.search(
        rf"<tr>(?:(?!</tr>).)*/task/{task_id}/change/(?:(?!</tr>).)*</tr>", html, re.S
    )
    assert found, f"no row for {task_id}"
    return found.group(0)


def status_of(html: str, task_id: str) -> str:
    found = re.search(r'<td class="field-state">(.*?)</td>', row_of(html, task_id), re.S)
    assert found
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def test_the_status_column_tells_retryable_failures_from_final_ones(admin_client, tasks):
    make_task("will-retry", "ns", status="failed", retries_left=2)
    html = admin_client.get(URL).content.decode()
    assert status_of(html, "will-retry") == "Failed, will retry"
    assert status_of(html, "final000000") == "Failed for good"
    assert status_of(html, "late") == "Lease expired"
    assert status_of(html, "leased") == "In progress"
    assert 'class="taskq-state state-failed_for_good"' in row_of(html, "final000000")


def test_the_list_shows_times_to_the_second_with_their_zone(admin_client, tasks):
    html = admin_client.get(URL).content.decode()
    late = Task.objects.get(pk="late")
    row = row_of(html, "late")
    assert late.updated_at.strftime("%Y-%m-%d %H:%M:%S") + "\xa0UTC" in row
    assert late.lease_expires_at is not None
    assert late.lease_expires_at.strftime("%Y-%m-%d %H:%M:%S") + "\xa0UTC" in row
    assert len(re.findall(TIMESTAMP, row)) == 2
    assert not re.search(r"[ap]\.m\.", html)


def test_the_task_page_shows_times_to_the_second_with_their_zone(admin_client, tasks):
    html = admin_client.get(f"{URL}late/change/").content.decode()
    for field in ("created", "updated", "turn", "lease_started", "lease_expiry"):
        cell = re.search(rf'<div class="form-row field-{field}">(.*?)</div>\s*</div>', html, re.S)
        assert cell, field
        assert re.search(TIMESTAMP, cell.group(1)), field
    assert not re.search(r"[ap]\.m\.", html)


def test_the_task_page_shows_the_lease_holder_and_expiry(admin_client, db):
    make_namespace("ns")
    make_task("held", "ns")
    make_task("free", "ns")
    (lease,) = capture_tasks(namespace_id="ns", limit=1, holder="worker-7")
    assert lease.id == "held"
    html = admin_client.get(f"{URL}held/change/").content.decode()
    holder = re.search(r'field-lease_holder">.*?<div class="readonly">(.*?)</div>', html, re.S)
    assert holder and holder.group(1) == "worker-7"
    assert lease.lease_expires_at is not None
    assert lease.lease_expires_at.strftime("%Y-%m-%d %H:%M:%S") in html
    html = admin_client.get(f"{URL}free/change/").content.decode()
    holder = re.search(r'field-lease_holder">.*?<div class="readonly">(.*?)</div>', html, re.S)
    assert holder and holder.group(1) == "— (no lease)"


def test_the_attempts_say_when_the_lease_in_progress_has_expired(admin_client, tasks):
    html = admin_client.get(f"{URL}late/change/").content.decode()
    table = re.search(r'<table class="taskq-attempts">(.*?)</table>', html, re.S)
    assert table and "lease expired" in table.group(1)
    html = admin_client.get(f"{URL}leased/change/").content.decode()
    table = re.search(r'<table class="taskq-attempts">(.*?)</table>', html, re.S)
    assert table and "in progress" in table.group(1)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("failed_for_good", {"final000000", "final000001", "final000002", "final000003"}),
        ("expired", {"late"}),
        ("idle", set()),
    ],
)
def test_state_filter(admin_client, tasks, state, expected):
    r = admin_client.get(f"{URL}?namespace__id__exact=ns&state={state}")
    assert set(listed_ids(r)) == expected


def test_namespace_filter(admin_client, tasks):
    r = admin_client.get(f"{URL}?namespace__id__exact=other")
    assert listed_ids(r) == ["o000000", "o000001", "o000002"]


def test_search_is_an_id_prefix_match(admin_client, tasks):
    r = admin_client.get(f"{URL}?q=final00000")
    assert set(listed_ids(r)) == {f"final{i:06d}" for i in range(4)}
    assert listed_ids(admin_client.get(f"{URL}?q=inal")) == []


def test_the_list_counts_large_results_by_estimate_only(admin_client, tasks, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from taskq_project import counting

    monkeypatch.setattr(counting, "EXACT_COUNT_LIMIT", 0)
    with CaptureQueriesContext(connection) as queries:
        r = admin_client.get(URL)
    assert r.status_code == 200
    assert r.context["cl"].show_full_result_count is False
    task_counts = [
        q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and "tasks_app_task" in q["sql"]
    ]
    assert task_counts == []


def test_task_change_form_is_read_only_with_no_save_buttons(admin_client, tasks):
    r = admin_client.get(f"{URL}leased/change/")
    assert r.status_code == 200
    html = r.content.decode()
    assert 'name="status"' not in html
    assert 'name="lease_expires_at"' not in html
    assert save_buttons(html) == []


def test_a_forged_post_to_a_task_page_changes_nothing(admin_client, tasks):
    before = Task.objects.filter(pk="leased").values().get()
    r = admin_client.post(
        f"{URL}leased/change/", {"status": "done", "retries_left": 99, "_save": "Save"}
    )
    assert r.status_code == 403
    assert Task.objects.filter(pk="leased").values().get() == before
    assert not LogEntry.objects.exists()


def test_the_task_add_page_can_save(admin_client, tasks):
    assert "_save" in save_buttons(admin_client.get(f"{URL}add/").content.decode())


def test_task_can_be_registered_from_the_admin(admin_client, tasks):
    r = admin_client.post(
        f"{URL}add/",
        {"id": "from-admin", "namespace": "ns", "timeout": 60, "retries_left": 2},
        follow=True,
    )
    assert r.status_code == 200
    task = Task.objects.get(pk="from-admin")
    assert (task.status, task.timeout, task.retries_left) == ("idle", 60, 2)
    assert task.available_at is not None


def test_registering_a_reserved_id_from_the_admin_is_refused(admin_client, tasks):
    r = admin_client.post(
        f"{URL}add/", {"id": "capture", "namespace": "ns", "timeout": 60, "retries_left": 2}
    )
    assert r.status_code == 200
    assert "reserved" in r.content.decode()
    assert not Task.objects.filter(pk="capture").exists()


def test_mark_done_on_a_selection_reports_changed_and_skipped(admin_client, tasks):
    r = post_action(admin_client, "mark_done", ["idle000001", "idle000000", "late"])
    assert task_state("idle000001")["status"] == "in_progress"  # captured earlier: valid lease
    text = r.content.decode()
    assert "Mark done: 1 changed, 2 skipped (2 under a valid lease)." in text
    assert task_state("late")["status"] == "done"
    entry = LogEntry.objects.latest("action_time")
    assert "Mark done: 1 changed, 2 skipped" in entry.change_message
    assert "of 3 selected tasks" in entry.change_message


def test_recent_actions_show_how_many_tasks_changed_not_how_many_were_selected(admin_client, tasks):
    post_action(admin_client, "mark_done", ["idle000001", "idle000000", "late"])
    entry = LogEntry.objects.get()
    assert entry.object_repr == "Mark done 1 task, 2 skipped"
    # The home page's "Recent actions" shows the repr.
    assert "Mark done 1 task, 2 skipped" in admin_client.get("/admin/").content.decode()


def test_the_log_of_an_action_on_everything_matching_counts_what_changed(admin_client, tasks):
    make_task("done-already", "ns", status="done")
    query = "?namespace__id__exact=ns&state=failed_for_good"
    post_action(
        admin_client, "requeue", ["final000000"], query=query, select_across=True, confirm="yes"
    )
    entry = LogEntry.objects.get()
    assert entry.object_repr == "Requeue 4 tasks"
    assert "Requeue: 4 changed, of every task matching the filter" in entry.change_message
    assert "state=failed_for_good" in entry.change_message


def test_cancel_lease_from_the_admin(admin_client, tasks):
    post_action(admin_client, "cancel_lease", ["idle000000"])
    assert task_state("idle000000")["status"] == "idle"


def test_mark_failed_from_the_admin(admin_client, tasks):
    post_action(admin_client, "mark_failed", ["late"])
    assert task_state("late")["status"] == "failed"


def test_delete_from_the_admin(admin_client, tasks):
    r = post_action(admin_client, "delete", ["final000000", "final000001"])
    assert "Delete: 2 changed." in r.content.decode()
    assert not Task.objects.filter(pk__in=["final000000", "final000001"]).exists()


def test_requeue_asks_whether_to_reset_retries_then_requeues(admin_client, tasks):
    r = post_action(admin_client, "requeue", ["final000000", "final000001"])
    assert "Reset retries left to" in r.content.decode()
    assert task_state("final000000")["status"] == "failed"  # nothing yet
    r = post_action(
        admin_client,
        "requeue",
        ["final000000", "final000001"],
        confirm="yes",
        reset_retries_to="2",
    )
    assert "Requeue: 2 changed." in r.content.decode()
    assert task_state("final000000") == {
        "status": "idle",
        "retries_left": 2,
        "capturable_later": True,
        "leased": False,
    }


def test_requeue_everything_matching_the_filter_confirms_the_count_first(admin_client, tasks):
    query = "?namespace__id__exact=ns&state=failed_for_good"
    r = post_action(admin_client, "requeue", ["final000000"], query=query, select_across=True)
    assert "every task matching the current filter" in r.content.decode()
    assert "<strong>4</strong>" in r.content.decode()
    r = post_action(
        admin_client, "requeue", ["final000000"], query=query, select_across=True, confirm="yes"
    )
    assert "Requeue: 4 changed." in r.content.decode()
    assert all(task_state(f"final{i:06d}")["status"] == "idle" for i in range(4))
    # The other namespace's failed tasks did not match the filter.
    assert task_state("o000000")["status"] == "failed"


def test_other_actions_on_everything_matching_also_confirm_first(admin_client, tasks):
    query = "?namespace__id__exact=other"
    r = post_action(admin_client, "delete", ["o000000"], query=query, select_across=True)
    assert "<strong>3</strong>" in r.content.decode()
    assert Task.objects.filter(namespace_id="other").count() == 3
    post_action(admin_client, "delete", ["o000000"], query=query, select_across=True, confirm="yes")
    assert Task.objects.filter(namespace_id="other").count() == 0


def test_staff_without_change_permission_cannot_act(tasks):
    client = Client()
    client.force_login(staff_with("tasks_app.view_task"))
    r = client.get(URL)
    assert r.status_code == 200
    assert 'value="mark_done"' not in r.content.decode()
    post_action(client, "mark_done", ["late"])
    post_action(client, "delete", ["late"])
    assert task_state("late")["status"] == "in_progress"


def test_staff_with_change_but_not_delete_permission_cannot_delete(tasks):
    client = Client()
    client.force_login(staff_with("tasks_app.view_task", "tasks_app.change_task"))
    post_action(client, "delete", ["late"])
    assert Task.objects.filter(pk="late").exists()
    post_action(client, "mark_done", ["late"])
    assert task_state("late")["status"] == "done"


def test_an_api_token_does_not_open_the_admin(tasks, token):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    r = client.get(URL)
    assert r.status_code == 302
    assert "/admin/login/" in r["Location"]
    r = post_action(client, "delete", ["late"])
    assert Task.objects.filter(pk="late").exists()


def test_the_admin_never_shows_a_lease_token(admin_client, db):
    make_namespace("ns")
    make_task("a")
    (leased,) = capture_tasks(namespace_id="ns", limit=1)
    pages = [admin_client.get(URL), admin_client.get(URL + "a/change/")]
    for page in pages:
        assert page.status_code == 200
        assert leased.lease_token not in page.content.decode()
    assert "Attempt" in pages[1].content.decode()


def test_the_task_page_marks_what_is_missing_with_one_dash(admin_client, tasks):
    html = admin_client.get(f"{URL}idle000001/change/").content.decode()
    result = re.search(r'field-result_json">.*?<div class="readonly">(.*?)</div>', html, re.S)
    assert result and result.group(1) == "—"
