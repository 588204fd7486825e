"""Registering, reading, listing and deleting tasks over /v1/task."""

from urllib.parse import quote

import pytest

from tasks_app.models import Task
from tests.factories import make_namespace, make_tasks


def test_register_task_applies_documented_defaults(api, namespace):
    r = api.post("/v1/task", {"id": "a", "namespace_id": namespace}, format="json")
    assert r.status_code == 201
    body = r.json()
    assert body["id"] == "a"
    assert body["namespace_id"] == "ns"
    assert body["timeout"] == 300
    assert body["retries_left"] == 3
    assert body["status"] == "idle"
    assert isinstance(body["updated_at"], int)
    assert body["lease_expires_at"] is None


def test_register_task_with_every_field_as_in_the_seed(api, namespace):
    payload = {
        "id": "Backup_Test_Shards1-10",
        "namespace_id": namespace,
        "timeout": 360,
        "retries_left": 5,
        "status": "idle",
    }
    r = api.post("/v1/task", payload, format="json")
    assert r.status_code == 201
    assert {k: r.json()[k] for k in payload} == payload


def test_register_existing_task_id_answers_409_and_keeps_the_original(api, namespace):
    api.post("/v1/task", {"id": "a", "namespace_id": namespace, "timeout": 10}, format="json")
    r = api.post("/v1/task", {"id": "a", "namespace_id": namespace, "timeout": 99}, format="json")
    assert r.status_code == 409
    assert "a" in r.json()["detail"]
    assert Task.objects.get(pk="a").timeout == 10


def test_task_ids_are_unique_across_namespaces(api, namespace):
    make_namespace("other")
    api.post("/v1/task", {"id": "a", "namespace_id": namespace}, format="json")
    r = api.post("/v1/task", {"id": "a", "namespace_id": "other"}, format="json")
    assert r.status_code == 409


def test_register_task_in_unknown_namespace_answers_400_naming_it(api, db):
    r = api.post("/v1/task", {"id": "a", "namespace_id": "nope"}, format="json")
    assert r.status_code == 400
    assert "nope" in r.json()["detail"]
    assert not Task.objects.exists()


@pytest.mark.parametrize("status", ["done", "failed", "in_progress"])
def test_register_task_in_a_given_status(api, namespace, status):
    r = api.post(
        "/v1/task", {"id": "a", "namespace_id": namespace, "status": status}, format="json"
    )
    assert r.status_code == 201
    assert r.json()["status"] == status
    assert Task.objects.get(pk="a").status == status


def test_read_task_returns_the_seed_shape(api, namespace):
    make_tasks(namespace, 1, prefix="x")
    r = api.get("/v1/task/x000000")
    assert r.status_code == 200
    assert set(r.json()) >= {
        "id",
        "namespace_id",
        "timeout",
        "retries_left",
        "updated_at",
        "status",
    }


def test_read_unknown_task_answers_204_with_empty_body(api, db):
    r = api.get("/v1/task/missing")
    assert r.status_code == 204
    assert r.content == b""


@pytest.mark.parametrize(
    "task_id", ["with space", "hash#tag", "what?", "a/b/c", "Größe-β-任务", "dot.json", "%41"]
)
def test_odd_task_ids_round_trip_through_the_path(api, namespace, task_id):
    r = api.post("/v1/task", {"id": task_id, "namespace_id": namespace}, format="json")
    assert r.status_code == 201
    encoded = quote(task_id, safe="")
    r = api.get(f"/v1/task/{encoded}")
    assert r.status_code == 200
    assert r.json()["id"] == task_id
    r = api.get(f"/v1/task/{encoded}/")
    assert r.status_code == 200
    assert r.json()["id"] == task_id
    r = api.delete(f"/v1/task/{encoded}")
    assert r.status_code == 204
    assert not Task.objects.filter(pk=task_id).exists()


def test_delete_task_answers_204_then_404(api, namespace):
    make_tasks(namespace, 1, prefix="x")
    assert api.delete("/v1/task/x000000").status_code == 204
    r = api.delete("/v1/task/x000000")
    assert r.status_code == 404
    assert "detail" in r.json()


def test_list_tasks_of_a_namespace(api, namespace):
    make_namespace("other")
    make_tasks(namespace, 3, prefix="a")
    make_tasks("other", 2, prefix="b")
    r = api.get("/v1/task?namespace_id=ns")
    assert r.status_code == 200
    body = r.json()
    assert [t["id"] for t in body["list"]] == ["a000000", "a000001", "a000002"]
    assert body["next"] is None


def test_list_tasks_filters_by_status(api, namespace):
    make_tasks(namespace, 2, prefix="i")
    make_tasks(namespace, 2, prefix="d", status="done")
    r = api.get("/v1/task?namespace_id=ns&status=done")
    assert [t["id"] for t in r.json()["list"]] == ["d000000", "d000001"]
    r = api.get("/v1/task?namespace_id=ns&status=done&status=idle")
    assert len(r.json()["list"]) == 4


def test_list_tasks_pages_with_a_cursor_until_exhausted(api, namespace):
    make_tasks(namespace, 25, prefix="p")
    seen: list[str] = []
    url = "/v1/task?namespace_id=ns&page_size=10"
    pages = 0
    while url:
        r = api.get(url)
        assert r.status_code == 200
        body = r.json()
        seen += [t["id"] for t in body["list"]]
        url = body["next"]
        pages += 1
    assert pages == 3
    assert seen == [f"p{i:06d}" for i in range(25)]


def test_list_default_page_holds_a_hundred_tasks(api, namespace):
    make_tasks(namespace, 150, prefix="p")
    body = api.get("/v1/task?namespace_id=ns").json()
    assert len(body["list"]) == 100
    assert body["next"]


def test_list_of_unknown_namespace_is_empty(api, db):
    r = api.get("/v1/task?namespace_id=nope")
    assert r.status_code == 200
    assert r.json() == {"list": [], "next": None}


@pytest.mark.parametrize("bad_id", ["x/", "capture/", "release/"])
def test_task_id_ending_with_a_slash_is_refused(api, namespace, bad_id):
    r = api.post("/v1/task", {"id": bad_id, "namespace_id": namespace}, format="json")
    assert r.status_code == 400
    assert "must not end with '/'" in r.json()["detail"]
    assert not Task.objects.exists()


def test_an_encoded_trailing_slash_in_the_raw_path_is_refused(api, namespace):
    make_tasks(namespace, 1, prefix="x")
    r = api.get("/v1/task/x000000%2F", RAW_URI="/v1/task/x000000%2F")
    assert r.status_code == 400
    assert "must not end with '/'" in r.json()["detail"]
    r = api.get("/v1/task/x000000/", RAW_URI="/v1/task/x000000/")
    assert r.status_code == 200


def test_list_refuses_a_namespace_id_no_namespace_could_have(api, db):
    r = api.get("/v1/task?namespace_id=%C2%9B")
    assert r.status_code == 400
    assert "control characters" in r.json()["detail"]


def test_ids_with_newlines_are_refused_not_unrouted(api, db):
    r = api.get("/v1/namespace/a%0Ab")
    assert r.status_code == 400
    assert "control characters" in r.json()["detail"]


def test_list_refuses_an_empty_namespace_id(api, db):
    r = api.get("/v1/task?namespace_id=")
    assert r.status_code == 400
    assert "must not be empty" in r.json()["detail"]
