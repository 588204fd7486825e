"""The namespace admin: register, counts, deregister with the tasks it takes along."""

from namespaces_app.models import Namespace
from tasks_app.models import Task
from tests.factories import make_namespace, make_tasks

URL = "/admin/namespaces_app/namespace/"


def test_register_a_namespace_from_the_admin(admin_client):
    r = admin_client.post(f"{URL}add/", {"id": "Infra"}, follow=True)
    assert r.status_code == 200
    assert Namespace.objects.filter(pk="Infra").exists()


def test_register_refuses_a_bad_or_taken_id(admin_client):
    make_namespace("taken")
    r = admin_client.post(f"{URL}add/", {"id": "taken"})
    assert "already exists" in r.content.decode()
    r = admin_client.post(f"{URL}add/", {"id": "ends/"})
    assert "must not end with" in r.content.decode()
    assert list(Namespace.objects.values_list("pk", flat=True)) == ["taken"]


def test_namespace_list_shows_task_counts_and_links_to_the_tasks(admin_client):
    make_namespace("ns")
    make_tasks("ns", 7)
    html = admin_client.get(URL).content.decode()
    assert '<td class="field-task_count">7</td>' in html
    assert "/admin/tasks_app/task/?namespace__id__exact=ns" in html


def test_delete_confirmation_says_how_many_tasks_go_with_it(admin_client):
    make_namespace("ns")
    make_tasks("ns", 12)
    html = admin_client.get(f"{URL}ns/delete/").content.decode()
    assert "Tasks: 12" in html or "tasks: 12" in html.lower()
    assert "Namespace: ns and all its tasks" in html


def test_deleting_a_namespace_from_the_admin_deletes_its_tasks(admin_client):
    make_namespace("ns")
    make_namespace("keep")
    make_tasks("ns", 12)
    make_tasks("keep", 2, prefix="k")
    r = admin_client.post(f"{URL}ns/delete/", {"post": "yes"}, follow=True)
    assert r.status_code == 200
    assert not Namespace.objects.filter(pk="ns").exists()
    assert Task.objects.count() == 2


def test_bulk_delete_action_on_namespaces(admin_client):
    make_namespace("a")
    make_namespace("b")
    make_tasks("a", 3)
    r = admin_client.post(
        URL, {"action": "delete_selected", "_selected_action": ["a", "b"], "post": "yes"}
    )
    assert r.status_code == 302
    assert not Namespace.objects.exists()
    assert not Task.objects.exists()
