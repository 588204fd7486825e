"""Registering a list of tasks in one POST /v1/task."""

from tasks_app.models import Task
from tests.factories import make_namespace, make_task


def items(n, namespace="ns", **fields):
    return [{"id": f"b{i:04d}", "namespace_id": namespace, **fields} for i in range(n)]


def test_a_list_registers_every_task_and_answers_201_with_the_list(api, namespace):
    r = api.post("/v1/task", items(3, timeout=60), format="json")
    assert r.status_code == 201
    body = r.json()
    assert [t["id"] for t in body["list"]] == ["b0000", "b0001", "b0002"]
    assert {t["timeout"] for t in body["list"]} == {60}
    assert Task.objects.count() == 3


def test_a_thousand_tasks_in_one_request(api, namespace):
    r = api.post("/v1/task", items(1000), format="json")
    assert r.status_code == 201
    assert Task.objects.count() == 1000


def test_more_than_a_thousand_is_refused(api, namespace):
    r = api.post("/v1/task", items(1001), format="json")
    assert r.status_code == 400
    assert "1000" in r.json()["detail"]
    assert not Task.objects.exists()


def test_an_empty_list_is_refused(api, namespace):
    r = api.post("/v1/task", [], format="json")
    assert r.status_code == 400
    assert "empty" in r.json()["detail"]


def test_a_bad_item_names_itself_and_nothing_is_registered(api, namespace):
    batch = items(5)
    batch[3]["timeout"] = "soon"
    r = api.post("/v1/task", batch, format="json")
    assert r.status_code == 400
    assert r.json()["detail"].startswith("item 3 (id 'b0003').timeout:")
    assert not Task.objects.exists()


def test_a_duplicate_inside_the_list_is_refused(api, namespace):
    batch = items(3)
    batch[2]["id"] = "b0000"
    r = api.post("/v1/task", batch, format="json")
    assert r.status_code == 400
    assert "Duplicate of item 0" in r.json()["detail"]
    assert not Task.objects.exists()


def test_an_id_already_registered_answers_409_naming_it(api, namespace):
    make_task("b0002")
    r = api.post("/v1/task", items(4), format="json")
    assert r.status_code == 409
    assert "b0002" in r.json()["detail"]
    assert Task.objects.count() == 1


def test_an_unknown_namespace_answers_400_naming_it(api, namespace):
    batch = items(2) + items(1, namespace="nope")
    batch[2]["id"] = "x"
    r = api.post("/v1/task", batch, format="json")
    assert r.status_code == 400
    assert "nope" in r.json()["detail"]
    assert not Task.objects.exists()


def test_a_list_may_span_namespaces(api, namespace):
    make_namespace("other")
    batch = [*items(1), {"id": "o", "namespace_id": "other"}]
    r = api.post("/v1/task", batch, format="json")
    assert r.status_code == 201
    assert set(Task.objects.values_list("namespace_id", flat=True)) == {"ns", "other"}


def test_an_item_that_is_not_an_object_is_named(api, namespace):
    r = api.post("/v1/task", [{"id": "a", "namespace_id": "ns"}, 5], format="json")
    assert r.status_code == 400
    assert r.json()["detail"].startswith("item 1")
    assert not Task.objects.exists()
