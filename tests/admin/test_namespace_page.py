"""A namespace's page: its tasks' counts, its chart, its settings, and the
pause, resume and purge controls, each confirmed first and each in the
admin log."""

import re

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.test import Client

from namespaces_app.models import Namespace
from tasks_app.models import Task
from tasks_app.services import capture_tasks, pause_namespace, release_tasks
from tests.admin.conftest import staff_with
from tests.factories import age_task, make_namespace, make_task, make_tasks

PAGE = "/admin/namespaces_app/namespace/{}/change/"
PAUSE = "/admin/namespaces_app/namespace/{}/pause/"
RESUME = "/admin/namespaces_app/namespace/{}/resume/"
PURGE = "/admin/namespaces_app/namespace/{}/purge/"


@pytest.fixture
def orders(db):
    """A namespace with tasks in most states, beside another one."""
    make_namespace("orders")
    make_namespace("other")
    make_tasks("orders", 4, prefix="idle-")
    make_tasks("orders", 3, prefix="done-", status="done")
    make_tasks("orders", 2, prefix="final-", status="failed", retries_left=0)
    make_tasks("orders", 1, prefix="retry-", status="failed", retries_left=2)
    make_tasks("other", 2, prefix="other-done-", status="done")


def count_on_page(html: str, category: str) -> str:
    found = re.search(rf'data-category="{category}">(.*?)</li>', html, re.S)
    assert found, f"no count of {category}"
    count = re.search(r'class="taskq-count">(.*?)</span>\s*$', found.group(1).strip(), re.S)
    assert count
    return re.sub(r"<[^>]+>", "", count.group(1)).strip()


def entries() -> list[LogEntry]:
    return list(LogEntry.objects.order_by("action_time"))


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_the_page_shows_the_counts_the_chart_and_the_settings(admin_client, orders):
    capture_tasks(namespace_id="orders", limit=1)
    release_tasks(task_ids=["idle-000000"], status="done")
    html = admin_client.get(PAGE.format("orders")).content.decode()
    assert count_on_page(html, "idle") == "3"
    assert count_on_page(html, "done") == "4"
    assert count_on_page(html, "failed_retry") == "1"
    assert count_on_page(html, "failed_for_good") == "2"
    assert count_on_page(html, "in_progress") == "0"
    assert '<strong id="taskq-total">10</strong>' in html
    # Each count leads to its tasks.
    assert "/admin/tasks_app/task/?namespace__id__exact=orders&amp;state=failed_for_good" in html
    assert '<svg class="taskq-chart"' in html
    assert '<span id="taskq-ended">1 done, 0 failed, 0 expired</span>' in html
    # The settings form is the page's, below.
    assert 'name="default_timeout"' in html
    assert html.index('id="taskq-namespace"') < html.index('name="default_timeout"')


def test_a_running_namespace_offers_pause_and_a_paused_one_resume(admin_client, orders):
    html = admin_client.get(PAGE.format("orders")).content.decode()
    assert f'href="{PAUSE.format("orders")}"' in html
    assert RESUME.format("orders") not in html
    assert "running" in html
    pause_namespace(namespace_id="orders")
    html = admin_client.get(PAGE.format("orders")).content.decode()
    assert f'href="{RESUME.format("orders")}"' in html
    assert PAUSE.format("orders") not in html
    assert 'data-paused="yes"' in html


def test_pause_asks_first_then_pauses_and_logs_it(admin_client, orders):
    page = admin_client.get(PAUSE.format("orders"))
    assert page.status_code == 200
    assert "Pause <strong>orders</strong>?" in page.content.decode()
    assert Namespace.objects.get(pk="orders").paused_at is None  # nothing yet
    assert entries() == []

    done = admin_client.post(PAUSE.format("orders"), follow=True)
    assert done.redirect_chain[-1][0] == PAGE.format("orders")
    assert Namespace.objects.get(pk="orders").paused_at is not None
    assert capture_tasks(namespace_id="orders", limit=1) == []
    (entry,) = entries()
    assert (entry.object_id, entry.action_flag) == ("orders", CHANGE)
    assert entry.content_type == ContentType.objects.get_for_model(Namespace)
    assert entry.change_message == "Paused: captures lease nothing until resumed."
    assert messages_of(done) == ["Paused orders: captures lease nothing until it is resumed."]


def test_resume_asks_first_then_resumes_and_logs_it(admin_client, orders):
    pause_namespace(namespace_id="orders")
    page = admin_client.get(RESUME.format("orders"))
    assert "Resume <strong>orders</strong>?" in page.content.decode()
    assert Namespace.objects.get(pk="orders").paused_at is not None

    done = admin_client.post(RESUME.format("orders"), follow=True)
    assert Namespace.objects.get(pk="orders").paused_at is None
    assert [row.id for row in capture_tasks(namespace_id="orders", limit=1)] == ["idle-000000"]
    (entry,) = entries()
    assert entry.object_id == "orders"
    assert entry.change_message.startswith("Resumed: captures lease again (paused since ")
    assert messages_of(done) == ["Resumed orders: captures lease again."]


def test_pausing_from_a_stale_page_changes_and_logs_nothing(admin_client, orders):
    first = pause_namespace(namespace_id="orders").paused_at
    done = admin_client.post(PAUSE.format("orders"), follow=True)
    assert Namespace.objects.get(pk="orders").paused_at == first
    assert entries() == []
    assert "orders was already paused" in messages_of(done)[0]
    done = admin_client.post(RESUME.format("other"), follow=True)
    assert entries() == []
    assert messages_of(done) == ["other was not paused."]


def test_pause_and_resume_need_the_change_permission(orders):
    client = Client()
    client.force_login(staff_with("namespaces_app.view_namespace", "tasks_app.view_task"))
    html = client.get(PAGE.format("orders")).content.decode()
    assert 'id="taskq-namespace"' in html
    assert PAUSE.format("orders") not in html
    assert client.get(PAUSE.format("orders")).status_code == 403
    assert client.post(PAUSE.format("orders")).status_code == 403
    assert Namespace.objects.get(pk="orders").paused_at is None
    pause_namespace(namespace_id="orders")
    assert client.post(RESUME.format("orders")).status_code == 403
    assert Namespace.objects.get(pk="orders").paused_at is not None
    assert entries() == []


def test_a_control_of_a_namespace_that_is_gone_says_so(admin_client, db):
    response = admin_client.post(PAUSE.format("gone"), follow=True)
    assert response.redirect_chain[-1][0] == "/admin/"
    assert "“gone” doesn\u2019t exist" in messages_of(response)[0]


def test_staff_who_may_not_see_tasks_get_the_settings_alone(db, orders):
    client = Client()
    client.force_login(staff_with("namespaces_app.view_namespace"))
    html = client.get(PAGE.format("orders")).content.decode()
    assert 'id="taskq-namespace"' not in html
    assert 'name="default_timeout"' in html or "Default timeout" in html


# --- Purge ------------------------------------------------------------------------


def test_purge_counts_first_then_deletes_and_logs_how_many(admin_client, orders):
    form = admin_client.get(PURGE.format("orders")).content.decode()
    for state in ("idle", "scheduled", "done", "failed_retry", "failed_final", "lease_expired"):
        assert f'value="{state}"' in form

    asked = admin_client.post(PURGE.format("orders"), {"states": ["done", "failed_final"]})
    text = re.sub(r"\s+", " ", asked.content.decode())
    assert "<li><strong>3</strong> done</li>" in text
    assert "<li><strong>2</strong> failed for good</li>" in text
    assert Task.objects.filter(namespace_id="orders").count() == 10  # nothing yet
    assert entries() == []

    done = admin_client.post(
        PURGE.format("orders"), {"states": ["done", "failed_final"], "confirm": "yes"}, follow=True
    )
    assert done.redirect_chain[-1][0] == PAGE.format("orders")
    left = set(Task.objects.filter(namespace_id="orders").values_list("pk", flat=True))
    assert left == {f"idle-{i:06d}" for i in range(4)} | {"retry-000000"}
    # The other namespace keeps its done tasks.
    assert Task.objects.filter(namespace_id="other").count() == 2
    (entry,) = entries()
    assert entry.object_id == "orders"
    assert entry.change_message == (
        "Purged 5 tasks: 3 done, 2 failed for good (states done, failed_final)."
    )
    assert messages_of(done) == ["Purged 5 tasks: 3 done, 2 failed for good."]
    # The page's counts follow.
    html = done.content.decode()
    assert count_on_page(html, "done") == "0"
    assert count_on_page(html, "idle") == "4"


def test_purge_of_tasks_older_than_a_few_hours(admin_client, orders):
    age_task("done-000001", 3 * 3600)
    data = {"states": ["done"], "older_than_hours": "2"}
    asked = admin_client.post(PURGE.format("orders"), data)
    text = re.sub(r"\s+", " ", asked.content.decode())
    assert "<li><strong>1</strong> done</li>" in text
    assert "last changed more than 2 hours ago" in text
    admin_client.post(PURGE.format("orders"), {**data, "confirm": "yes"})
    assert not Task.objects.filter(pk="done-000001").exists()
    assert Task.objects.filter(pk__in=["done-000000", "done-000002"]).count() == 2
    (entry,) = entries()
    assert entry.change_message == (
        "Purged 1 task: 1 done (states done, last changed over 2 h ago)."
    )


def test_purge_needs_a_state(admin_client, orders):
    response = admin_client.post(PURGE.format("orders"), {"states": [], "confirm": "yes"})
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert Task.objects.filter(namespace_id="orders").count() == 10
    assert entries() == []


def test_purge_refuses_an_age_beyond_the_apis_bound(admin_client, orders):
    data = {"states": ["done"], "older_than_hours": str(10 * 365 * 24 + 1), "confirm": "yes"}
    response = admin_client.post(PURGE.format("orders"), data)
    assert "less than or equal to" in response.content.decode()
    assert Task.objects.filter(namespace_id="orders").count() == 10


def test_purge_needs_the_permission_to_delete_tasks(orders):
    client = Client()
    client.force_login(
        staff_with(
            "namespaces_app.view_namespace",
            "namespaces_app.change_namespace",
            "tasks_app.view_task",
        )
    )
    html = client.get(PAGE.format("orders")).content.decode()
    assert PURGE.format("orders") not in html
    assert PAUSE.format("orders") in html
    assert client.get(PURGE.format("orders")).status_code == 403
    data = {"states": ["done"], "confirm": "yes"}
    assert client.post(PURGE.format("orders"), data).status_code == 403
    assert Task.objects.filter(namespace_id="orders").count() == 10


def test_a_purge_that_finds_nothing_says_so_and_logs_the_zero(admin_client, orders):
    done = admin_client.post(
        PURGE.format("orders"), {"states": ["scheduled"], "confirm": "yes"}, follow=True
    )
    assert messages_of(done) == ["Purged 0 tasks."]
    (entry,) = entries()
    assert entry.change_message == "Purged 0 tasks (states scheduled)."


def test_the_namespace_list_says_which_namespaces_are_paused(admin_client, orders):
    pause_namespace(namespace_id="orders")
    html = admin_client.get("/admin/namespaces_app/namespace/").content.decode()
    paused = re.search(r'<td class="field-captures">(.*?)</td>', html, re.S)
    assert paused and "paused" in paused.group(1)
    assert '<td class="field-captures">running</td>' in html  # "other"


def test_a_task_in_the_list_links_to_its_namespace_page(admin_client, orders):
    make_task("x", "orders")
    html = admin_client.get("/admin/tasks_app/task/").content.decode()
    assert f'<a href="{PAGE.format("orders")}">orders</a>' in html


def test_the_namespace_pages_show_their_times_to_the_second_with_their_zone(admin_client, orders):
    created = Namespace.objects.get(pk="orders").created_at.strftime("%Y-%m-%d %H:%M:%S")
    html = admin_client.get(PAGE.format("orders")).content.decode()
    assert f"{created}\xa0UTC" in html
    html = admin_client.get("/admin/namespaces_app/namespace/").content.decode()
    assert '<td class="field-created"><time datetime="' in html
    assert f"{created}\xa0UTC" in html
