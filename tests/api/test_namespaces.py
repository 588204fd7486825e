"""The /v1/namespace endpoints: list, register, read, deregister."""

from urllib.parse import quote

import pytest

from namespaces_app.models import Namespace
from tasks_app.models import Task
from tests.factories import make_namespace, make_task, make_tasks


def ns_url(namespace_id: str, *, slash: bool = False) -> str:
    return f"/v1/namespace/{quote(namespace_id, safe='')}" + ("/" if slash else "")


# --- list -----------------------------------------------------------------


def test_list_namespaces_is_empty_when_none_registered(api):
    r = api.get("/v1/namespace")
    assert r.status_code == 200, r.content
    assert r.json() == {"list": []}


def test_list_namespaces_returns_every_namespace_as_an_object_with_its_id(api):
    for namespace_id in ["beta", "alpha", "Infrastructure"]:
        make_namespace(namespace_id)
    r = api.get("/v1/namespace")
    assert r.status_code == 200, r.content
    body = r.json()
    assert set(body) == {"list"}
    assert sorted(item["id"] for item in body["list"]) == ["Infrastructure", "alpha", "beta"]
    assert all(set(item) == {"id"} for item in body["list"])


def test_list_namespaces_answers_json(api, namespace):
    r = api.get("/v1/namespace")
    assert r.status_code == 200
    assert r["Content-Type"].startswith("application/json")
    assert r.json() == {"list": [{"id": namespace}]}


# --- register -------------------------------------------------------------


def test_register_namespace_answers_201_with_the_namespace(api):
    r = api.post("/v1/namespace", {"id": "Infra"}, format="json")
    assert r.status_code == 201, r.content
    assert next(iter(r.json().items())) == ("id", "Infra")
    assert Namespace.objects.filter(pk="Infra").exists()


def test_registered_namespace_appears_in_the_list(api):
    api.post("/v1/namespace", {"id": "Infra"}, format="json")
    r = api.get("/v1/namespace")
    assert r.json() == {"list": [{"id": "Infra"}]}


def test_register_namespace_twice_answers_409(api):
    r = api.post("/v1/namespace", {"id": "Infra"}, format="json")
    assert r.status_code == 201, r.content
    r = api.post("/v1/namespace", {"id": "Infra"}, format="json")
    assert r.status_code == 409, r.content
    body = r.json()
    assert isinstance(body["detail"], str)
    assert "Infra" in body["detail"]
    assert Namespace.objects.filter(pk="Infra").count() == 1


def test_register_namespace_ids_are_case_sensitive(api):
    assert api.post("/v1/namespace", {"id": "infra"}, format="json").status_code == 201
    assert api.post("/v1/namespace", {"id": "Infra"}, format="json").status_code == 201
    assert Namespace.objects.count() == 2


def test_register_namespace_accepts_an_id_of_255_characters(api):
    namespace_id = "n" * 255
    r = api.post("/v1/namespace", {"id": namespace_id}, format="json")
    assert r.status_code == 201, r.content
    assert next(iter(r.json().items())) == ("id", namespace_id)


# --- read -----------------------------------------------------------------


def test_read_namespace_answers_200_with_the_namespace(api, namespace):
    r = api.get(f"/v1/namespace/{namespace}")
    assert r.status_code == 200, r.content
    assert next(iter(r.json().items())) == ("id", namespace)


def test_read_unknown_namespace_answers_204_with_an_empty_body(api):
    r = api.get("/v1/namespace/nope")
    assert r.status_code == 204
    assert r.content == b""


def test_read_namespace_does_not_match_by_prefix_or_case(api, namespace):
    assert api.get("/v1/namespace/n").status_code == 204
    assert api.get("/v1/namespace/NS").status_code == 204
    assert api.get("/v1/namespace/nss").status_code == 204


# --- deregister -----------------------------------------------------------


def test_delete_namespace_answers_204_and_removes_it(api, namespace):
    r = api.delete(f"/v1/namespace/{namespace}")
    assert r.status_code == 204, r.content
    assert r.content == b""
    assert not Namespace.objects.filter(pk=namespace).exists()
    assert api.get(f"/v1/namespace/{namespace}").status_code == 204
    assert api.get("/v1/namespace").json() == {"list": []}


def test_delete_unknown_namespace_answers_404_with_json_detail(api):
    r = api.delete("/v1/namespace/nope")
    assert r.status_code == 404, r.content
    body = r.json()
    assert isinstance(body["detail"], str)
    assert "nope" in body["detail"]


def test_delete_namespace_twice_answers_404_the_second_time(api, namespace):
    assert api.delete(f"/v1/namespace/{namespace}").status_code == 204
    assert api.delete(f"/v1/namespace/{namespace}").status_code == 404


def test_delete_namespace_deletes_its_tasks_and_only_its_tasks(api, namespace):
    make_namespace("other")
    make_tasks(namespace, 5, prefix="mine-")
    make_task("in-flight", namespace, status="in_progress")
    make_task("finished", namespace, status="done")
    make_tasks("other", 3, prefix="theirs-")
    assert Task.objects.filter(namespace_id=namespace).count() == 7

    r = api.delete(f"/v1/namespace/{namespace}")
    assert r.status_code == 204, r.content

    assert Task.objects.filter(namespace_id=namespace).count() == 0
    assert not Task.objects.filter(pk__in=["in-flight", "finished"]).exists()
    assert sorted(Task.objects.values_list("id", flat=True)) == [
        "theirs-000000",
        "theirs-000001",
        "theirs-000002",
    ]
    assert list(Namespace.objects.values_list("id", flat=True)) == ["other"]


def test_deleted_namespace_can_be_registered_again_without_its_old_tasks(api, namespace):
    make_tasks(namespace, 2)
    assert api.delete(f"/v1/namespace/{namespace}").status_code == 204
    r = api.post("/v1/namespace", {"id": namespace}, format="json")
    assert r.status_code == 201, r.content
    assert not Task.objects.filter(namespace_id=namespace).exists()


def test_deleted_namespace_tasks_are_gone_from_the_task_api(api, namespace):
    make_task("a", namespace)
    assert api.delete(f"/v1/namespace/{namespace}").status_code == 204
    assert api.get("/v1/task/a").status_code == 204
    r = api.get("/v1/task", {"namespace_id": namespace})
    assert r.status_code == 200, r.content
    assert r.json()["list"] == []


# --- trailing slashes, never a redirect ----------------------------------


def test_list_namespaces_with_trailing_slash_answers_without_redirect(api, namespace):
    r = api.get("/v1/namespace/")
    assert not 300 <= r.status_code < 400
    assert r.status_code == 200, r.content
    assert r.json() == {"list": [{"id": namespace}]}


def test_register_namespace_with_trailing_slash_answers_without_redirect(api):
    r = api.post("/v1/namespace/", {"id": "Infra"}, format="json")
    assert not 300 <= r.status_code < 400
    assert r.status_code == 201, r.content
    assert next(iter(r.json().items())) == ("id", "Infra")
    assert Namespace.objects.filter(pk="Infra").exists()


def test_read_namespace_with_trailing_slash_answers_without_redirect(api, namespace):
    r = api.get(f"/v1/namespace/{namespace}/")
    assert not 300 <= r.status_code < 400
    assert r.status_code == 200, r.content
    assert next(iter(r.json().items())) == ("id", namespace)


def test_read_unknown_namespace_with_trailing_slash_answers_204(api):
    r = api.get("/v1/namespace/nope/")
    assert r.status_code == 204
    assert r.content == b""


def test_delete_namespace_with_trailing_slash_answers_without_redirect(api, namespace):
    r = api.delete(f"/v1/namespace/{namespace}/")
    assert not 300 <= r.status_code < 400
    assert r.status_code == 204, r.content
    assert not Namespace.objects.filter(pk=namespace).exists()


def test_delete_unknown_namespace_with_trailing_slash_answers_404(api):
    r = api.delete("/v1/namespace/nope/")
    assert r.status_code == 404, r.content
    assert isinstance(r.json()["detail"], str)


# --- ids that need percent-encoding --------------------------------------

AWKWARD_IDS = [
    "Größe/β #1?x",
    "with space",
    "hash#tag",
    "question?mark=1&b=2",
    "a/b/c",
    "/leading-slash",
    "50% off",
    "plus+sign",
    "semi;colon",
    "..",
    "../escape",
    "日本語の名前",
    "emoji 🚀",
    "back\\slash",
    'quote"s',
    "tab-free\u00a0nbsp",
]


@pytest.mark.parametrize("namespace_id", AWKWARD_IDS)
def test_namespace_with_awkward_id_round_trips_through_its_percent_encoded_path(api, namespace_id):
    r = api.post("/v1/namespace", {"id": namespace_id}, format="json")
    assert r.status_code == 201, r.content
    assert next(iter(r.json().items())) == ("id", namespace_id)

    assert api.get("/v1/namespace").json() == {"list": [{"id": namespace_id}]}

    r = api.get(ns_url(namespace_id))
    assert r.status_code == 200, r.content
    assert next(iter(r.json().items())) == ("id", namespace_id)

    r = api.get(ns_url(namespace_id, slash=True))
    assert r.status_code == 200, r.content
    assert next(iter(r.json().items())) == ("id", namespace_id)

    r = api.delete(ns_url(namespace_id))
    assert r.status_code == 204, r.content
    assert not Namespace.objects.filter(pk=namespace_id).exists()


def test_namespace_with_awkward_id_is_found_only_by_its_exact_id(api):
    make_namespace("Größe/β #1?x")
    # The raw (unencoded) form is cut at "#" and "?" by any HTTP client: not the namespace.
    assert api.get("/v1/namespace/Größe/β").status_code == 204
    assert api.get(ns_url("Größe/β #1")).status_code == 204
    assert api.get(ns_url("Größe/β #1?x")).status_code == 200


@pytest.mark.parametrize("bad_id", ["x/", "a/b/", "/"])
def test_namespace_id_ending_with_a_slash_is_refused(api, bad_id):
    # Decoded, `/v1/namespace/x%2F` is `/v1/namespace/x/`: the id `x/` could
    # not be told from `x` asked with a trailing slash.
    r = api.post("/v1/namespace", {"id": bad_id}, format="json")
    assert r.status_code == 400
    assert "must not end with '/'" in r.json()["detail"]
    assert not Namespace.objects.exists()
