"""The bad-input matrix: every malformed request is refused with a 4xx JSON error
carrying a `detail` string, and leaves the database exactly as it was."""

import base64
import json
from typing import Any

import pytest

from namespaces_app.models import Namespace
from tasks_app.models import MAX_INT, Task
from tests.factories import make_namespace, make_task

JSON = "application/json"
LONG_ID = "x" * 256
MAX_ID = "x" * 255
SURROGATE = "\\ud800"  # a lone surrogate, as it appears escaped in raw JSON text


@pytest.fixture
def world(namespace):
    """A namespace holding one task in each state a bad request could wrongly change."""
    make_task("idle-1", namespace)
    make_task("busy-1", namespace, status="in_progress")
    make_task("done-1", namespace, status="done")
    make_task("failed-1", namespace, status="failed", retries_left=2)
    return namespace


def snapshot() -> dict[str, Any]:
    return {
        "namespaces": list(Namespace.objects.order_by("id").values_list("id", flat=True)),
        "tasks": list(
            Task.objects.order_by("id").values(
                "id",
                "namespace_id",
                "timeout",
                "retries_left",
                "status",
                "created_at",
                "updated_at",
                "available_at",
                "lease_expires_at",
            )
        ),
    }


def encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body).encode()


def send(client, method: str, path: str, body: Any = b"", content_type: str = JSON):
    return client.generic(method, path, encode(body), content_type=content_type)


def assert_client_error(response, status: int | None = None, field: str | None = None) -> dict:
    assert 400 <= response.status_code < 500, (response.status_code, response.content)
    if status is not None:
        assert response.status_code == status, (response.status_code, response.content)
    assert response["Content-Type"].startswith("application/json"), response.content
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("detail"), str), body
    assert body["detail"].strip(), body
    if field is not None:
        assert isinstance(body.get("errors"), dict), body
        assert field in body["errors"], body
    return body


# Bodies that are not a JSON object at all, refused by every JSON endpoint.
NOT_JSON = [
    pytest.param(b'{"id": ', id="truncated-json"),
    pytest.param(b"{id: 'a'}", id="unquoted-keys"),
    pytest.param(b"{'id': 'a'}", id="single-quotes"),
    pytest.param(b'{"id": "a",}', id="trailing-comma"),
    pytest.param(b'{"id": NaN}', id="nan"),
    pytest.param(b'{"id": Infinity}', id="infinity"),
    pytest.param(b'{"id": "\xff\xfe"}', id="invalid-utf8"),
    pytest.param(b"\x00\x00", id="binary"),
    pytest.param(b'{"id": ' + b"9" * 5000 + b"}", id="number-beyond-int-parse-limit"),
]
NOT_AN_OBJECT = [
    pytest.param(b'[{"id": "a"}]', id="list"),
    pytest.param(b"[]", id="empty-list"),
    pytest.param(b'"a"', id="string"),
    pytest.param(b"5", id="number"),
    pytest.param(b"1.5", id="float"),
    pytest.param(b"true", id="bool"),
    pytest.param(b"null", id="null"),
]
OTHER_MEDIA_TYPES = [
    pytest.param("text/plain", id="text-plain"),
    pytest.param("application/x-www-form-urlencoded", id="form"),
    pytest.param("multipart/form-data; boundary=xyz", id="multipart"),
    pytest.param("application/xml", id="xml"),
]

# Values no namespace or task id may take (sent in the "id" or "namespace_id" field).
BAD_IDS = [
    pytest.param(5, id="number"),
    pytest.param(1.5, id="float"),
    pytest.param(True, id="bool"),
    pytest.param(None, id="null"),
    pytest.param(["a"], id="list"),
    pytest.param({"id": "a"}, id="object"),
    pytest.param("", id="empty"),
    pytest.param(LONG_ID, id="256-chars"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x1fb", id="unit-separator"),
    pytest.param("\n", id="newline"),
    pytest.param("tab\there", id="tab"),
    pytest.param("del\x7f", id="del"),
    pytest.param("nel\x85", id="c1-control"),
]


# --- POST /v1/namespace ----------------------------------------------------


@pytest.mark.parametrize("raw", NOT_JSON)
def test_register_namespace_with_invalid_json_is_refused(api, world, raw):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/namespace", raw), 400)
    assert snapshot() == before


@pytest.mark.parametrize("raw", NOT_AN_OBJECT)
def test_register_namespace_with_a_body_that_is_not_an_object_is_refused(api, world, raw):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/namespace", raw), 400)
    assert snapshot() == before


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_register_namespace_with_a_bad_id_is_refused(api, world, bad_id):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/namespace", {"id": bad_id}), 400, field="id")
    assert snapshot() == before


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"id": "' + SURROGATE.encode() + b'"}', id="lone-high-surrogate"),
        pytest.param(b'{"id": "a\\udc00b"}', id="lone-low-surrogate"),
        pytest.param(b'{"id": "\\udc00\\ud800"}', id="reversed-pair"),
    ],
)
def test_register_namespace_with_a_lone_surrogate_in_its_id_is_refused(api, world, raw):
    before = snapshot()
    # Not Unicode text, so not JSON: refused by the parser, saying where.
    body = assert_client_error(send(api, "POST", "/v1/namespace", raw), 400)
    assert "surrogate" in body["detail"]
    assert snapshot() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "id", id="empty-object"),
        pytest.param({"name": "a"}, "name", id="only-unknown-field"),
        pytest.param({"id": "a", "extra": 1}, "extra", id="unknown-field"),
        pytest.param({"ID": "a"}, "ID", id="wrong-case-key"),
        pytest.param({"id": "a", "namespace_id": "b"}, "namespace_id", id="task-field"),
    ],
)
def test_register_namespace_with_missing_or_unknown_fields_is_refused(api, world, body, field):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/namespace", body), 400, field=field)
    assert snapshot() == before


def test_register_namespace_with_an_empty_body_is_refused(api):
    assert_client_error(send(api, "POST", "/v1/namespace", b""), 400, field="id")
    assert Namespace.objects.count() == 0


@pytest.mark.parametrize("content_type", OTHER_MEDIA_TYPES)
def test_register_namespace_in_another_media_type_answers_415(api, world, content_type):
    before = snapshot()
    r = send(api, "POST", "/v1/namespace", b"id=new", content_type=content_type)
    assert_client_error(r, 415)
    assert snapshot() == before


def test_register_namespace_accepts_an_id_of_exactly_255_characters(api):
    r = send(api, "POST", "/v1/namespace", {"id": MAX_ID})
    assert r.status_code == 201, r.content
    assert Namespace.objects.filter(pk=MAX_ID).exists()


# --- POST /v1/task ---------------------------------------------------------

NEW_TASK = {"id": "new", "namespace_id": "ns"}


def with_(**changes: Any) -> dict[str, Any]:
    return {**NEW_TASK, **changes}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in NEW_TASK.items() if k != key}


@pytest.mark.parametrize("raw", NOT_JSON)
def test_register_task_with_invalid_json_is_refused(api, world, raw):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/task", raw), 400)
    assert snapshot() == before


@pytest.mark.parametrize("raw", NOT_AN_OBJECT)
def test_register_task_with_a_body_that_is_not_an_object_is_refused(api, world, raw):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/task", raw), 400)
    assert snapshot() == before


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_register_task_with_a_bad_id_is_refused(api, world, bad_id):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/task", with_(id=bad_id)), 400, field="id")
    assert snapshot() == before


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_register_task_with_a_bad_namespace_id_is_refused(api, world, bad_id):
    before = snapshot()
    r = send(api, "POST", "/v1/task", with_(namespace_id=bad_id))
    assert_client_error(r, 400, field="namespace_id")
    assert snapshot() == before


@pytest.mark.parametrize("field", ["id", "namespace_id"])
def test_register_task_with_a_lone_surrogate_in_an_id_is_refused(api, world, field):
    raw = json.dumps(with_(**{field: "PLACEHOLDER"})).replace("PLACEHOLDER", SURROGATE)
    before = snapshot()
    body = assert_client_error(send(api, "POST", "/v1/task", raw.encode()), 400)
    assert "surrogate" in body["detail"]
    assert snapshot() == before


@pytest.mark.parametrize("reserved", ["capture", "release", "extend"])
def test_register_task_with_a_reserved_id_is_refused(api, world, reserved):
    before = snapshot()
    body = assert_client_error(send(api, "POST", "/v1/task", with_(id=reserved)), 400, field="id")
    assert "reserved" in body["detail"]
    assert snapshot() == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"timeout": "10"}, "timeout", id="timeout-string"),
        pytest.param({"timeout": 1.5}, "timeout", id="timeout-float"),
        pytest.param({"timeout": 10.0}, "timeout", id="timeout-integral-float"),
        pytest.param({"timeout": True}, "timeout", id="timeout-bool"),
        pytest.param({"timeout": None}, "timeout", id="timeout-null"),
        pytest.param({"timeout": [10]}, "timeout", id="timeout-list"),
        pytest.param({"timeout": 0}, "timeout", id="timeout-zero"),
        pytest.param({"timeout": -1}, "timeout", id="timeout-negative"),
        pytest.param({"timeout": MAX_INT + 1}, "timeout", id="timeout-beyond-int32"),
        pytest.param({"timeout": 10**30}, "timeout", id="timeout-huge"),
        pytest.param({"retries_left": None}, "retries_left", id="retries-null"),
        pytest.param({"retries_left": "3"}, "retries_left", id="retries-string"),
        pytest.param({"retries_left": 1.5}, "retries_left", id="retries-float"),
        pytest.param({"retries_left": False}, "retries_left", id="retries-bool"),
        pytest.param({"retries_left": -1}, "retries_left", id="retries-negative"),
        pytest.param({"retries_left": MAX_INT + 1}, "retries_left", id="retries-beyond-int32"),
        pytest.param({"retries_left": 10**30}, "retries_left", id="retries-huge"),
        pytest.param({"retries_left": -(10**30)}, "retries_left", id="retries-huge-negative"),
        pytest.param({"status": "bogus"}, "status", id="status-unknown"),
        pytest.param({"status": ""}, "status", id="status-empty"),
        pytest.param({"status": "IDLE"}, "status", id="status-wrong-case"),
        pytest.param({"status": "in progress"}, "status", id="status-space"),
        pytest.param({"status": None}, "status", id="status-null"),
        pytest.param({"status": 1}, "status", id="status-number"),
        pytest.param({"status": ["idle"]}, "status", id="status-list"),
        pytest.param({"updated_at": 1673362943}, "updated_at", id="updated_at-not-writable"),
        pytest.param({"lease_expires_at": 1}, "lease_expires_at", id="lease-not-writable"),
        pytest.param({"retries": 3}, "retries", id="unknown-field"),
    ],
)
def test_register_task_with_a_bad_field_is_refused(api, world, changes, field):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/task", with_(**changes)), 400, field=field)
    assert snapshot() == before


@pytest.mark.parametrize("missing", ["id", "namespace_id"])
def test_register_task_without_a_required_field_is_refused(api, world, missing):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/task", without(missing)), 400, field=missing)
    assert snapshot() == before


def test_register_task_in_an_unregistered_namespace_answers_400_naming_it(api, world):
    before = snapshot()
    body = assert_client_error(send(api, "POST", "/v1/task", with_(namespace_id="no-such-ns")), 400)
    assert "no-such-ns" in body["detail"]
    assert snapshot() == before


def test_register_task_with_a_taken_id_answers_409_and_keeps_the_original(api, world):
    before = snapshot()
    body = {"id": "busy-1", "namespace_id": "ns", "timeout": 9, "retries_left": 9}
    r = send(api, "POST", "/v1/task", body)
    assert_client_error(r, 409)
    assert snapshot() == before


@pytest.mark.parametrize("content_type", OTHER_MEDIA_TYPES)
def test_register_task_in_another_media_type_answers_415(api, world, content_type):
    before = snapshot()
    r = send(api, "POST", "/v1/task", b"id=new&namespace_id=ns", content_type=content_type)
    assert_client_error(r, 415)
    assert snapshot() == before


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"id": MAX_ID}, id="id-255-chars"),
        pytest.param({"timeout": 1}, id="timeout-1"),
        pytest.param({"timeout": MAX_INT}, id="timeout-max-int32"),
        pytest.param({"retries_left": 0}, id="retries-0"),
        pytest.param({"retries_left": MAX_INT}, id="retries-max-int32"),
        pytest.param({"status": "done"}, id="status-done"),
    ],
)
def test_register_task_accepts_values_at_the_edges_of_their_ranges(api, namespace, changes):
    r = send(api, "POST", "/v1/task", with_(**changes))
    assert r.status_code == 201, r.content
    body = r.json()
    for key, value in changes.items():
        assert body[key] == value


def test_register_task_defaults_timeout_retries_and_status(api, namespace):
    r = send(api, "POST", "/v1/task", NEW_TASK)
    assert r.status_code == 201, r.content
    body = r.json()
    assert (body["timeout"], body["retries_left"], body["status"]) == (300, 3, "idle")


# --- PUT /v1/task/release --------------------------------------------------

RELEASE = {"status": "done", "task_ids": ["busy-1"]}


def release_with(**changes: Any) -> dict[str, Any]:
    return {**RELEASE, **changes}


@pytest.mark.parametrize("raw", NOT_JSON)
def test_release_with_invalid_json_is_refused(api, world, raw):
    before = snapshot()
    assert_client_error(send(api, "PUT", "/v1/task/release", raw), 400)
    assert snapshot() == before


@pytest.mark.parametrize(
    "raw",
    [
        *NOT_AN_OBJECT,
        pytest.param(b'["busy-1"]', id="list-of-ids"),
        pytest.param(b'[{"status": "done", "task_ids": ["busy-1"]}]', id="list-of-release"),
    ],
)
def test_release_with_a_body_that_is_not_an_object_is_refused(api, world, raw):
    before = snapshot()
    assert_client_error(send(api, "PUT", "/v1/task/release", raw), 400)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(release_with(task_ids=["busy-1"] * 1001), "task_ids", id="1001-ids"),
        pytest.param(
            release_with(task_ids=["busy-1"] + [f"t{i}" for i in range(1000)]),
            "task_ids",
            id="1001-distinct-ids",
        ),
        pytest.param(release_with(task_ids=[]), "task_ids", id="empty-list"),
        pytest.param(release_with(task_ids="busy-1"), "task_ids", id="string"),
        pytest.param(release_with(task_ids={"busy-1": True}), "task_ids", id="object"),
        pytest.param(release_with(task_ids=None), "task_ids", id="null"),
        pytest.param(release_with(task_ids=5), "task_ids", id="number"),
        pytest.param(release_with(task_ids=["busy-1", 5]), "task_ids", id="number-in-list"),
        pytest.param(release_with(task_ids=["busy-1", None]), "task_ids", id="null-in-list"),
        pytest.param(release_with(task_ids=["busy-1", ["x"]]), "task_ids", id="nested-list"),
        pytest.param(release_with(task_ids=["busy-1", ""]), "task_ids", id="empty-id"),
        pytest.param(release_with(task_ids=["busy-1", LONG_ID]), "task_ids", id="256-char-id"),
        pytest.param(release_with(task_ids=["busy-1", "a\x00b"]), "task_ids", id="nul-id"),
        pytest.param(release_with(task_ids=["busy-1", "a\x1fb"]), "task_ids", id="ctrl-id"),
        pytest.param({"status": "done"}, "task_ids", id="task_ids-missing"),
        pytest.param(release_with(status="in_progress"), "status", id="status-in_progress"),
        pytest.param(release_with(status="bogus"), "status", id="status-unknown"),
        pytest.param(release_with(status="DONE"), "status", id="status-wrong-case"),
        pytest.param(release_with(status=""), "status", id="status-empty"),
        pytest.param(release_with(status=None), "status", id="status-null"),
        pytest.param(release_with(status=1), "status", id="status-number"),
        pytest.param({"task_ids": ["busy-1"]}, "status", id="status-missing"),
        pytest.param(release_with(retries_left=5), "retries_left", id="unknown-field"),
        pytest.param(release_with(ids=["busy-1"]), "ids", id="misspelt-field"),
        pytest.param({}, "status", id="empty-object"),
    ],
)
def test_release_with_bad_fields_is_refused_and_releases_nothing(api, world, body, field):
    before = snapshot()
    assert_client_error(send(api, "PUT", "/v1/task/release", body), 400, field=field)
    assert snapshot() == before


def test_release_with_a_lone_surrogate_id_is_refused_and_releases_nothing(api, world):
    raw = b'{"status": "done", "task_ids": ["busy-1", "' + SURROGATE.encode() + b'"]}'
    before = snapshot()
    body = assert_client_error(send(api, "PUT", "/v1/task/release", raw), 400)
    assert "surrogate" in body["detail"]
    assert snapshot() == before


@pytest.mark.parametrize("content_type", OTHER_MEDIA_TYPES)
def test_release_in_another_media_type_answers_415(api, world, content_type):
    before = snapshot()
    r = send(
        api, "PUT", "/v1/task/release", b"status=done&task_ids=busy-1", content_type=content_type
    )
    assert_client_error(r, 415)
    assert snapshot() == before


def test_release_accepts_exactly_1000_ids(api, world):
    ids = ["busy-1"] + [f"unknown-{i}" for i in range(998)] + [MAX_ID]
    r = send(api, "PUT", "/v1/task/release", release_with(task_ids=ids))
    assert r.status_code == 200, r.content
    body = r.json()
    assert [t["id"] for t in body["list"]] == ["busy-1"]
    assert len(body["errors"]) == 999


# --- GET and POST /v1/task/capture ----------------------------------------

BAD_CAPTURE_QUERIES = [
    pytest.param("namespace_id=ns&limit=0", "limit", id="limit-0"),
    pytest.param("namespace_id=ns&limit=1001", "limit", id="limit-1001"),
    pytest.param("namespace_id=ns&limit=abc", "limit", id="limit-abc"),
    pytest.param("namespace_id=ns&limit=1.5", "limit", id="limit-1.5"),
    pytest.param("namespace_id=ns&limit=1.0", "limit", id="limit-1.0"),
    pytest.param("namespace_id=ns&limit=-1", "limit", id="limit-negative"),
    pytest.param("namespace_id=ns&limit=", "limit", id="limit-empty"),
    pytest.param("namespace_id=ns&limit=%201", "limit", id="limit-leading-space"),
    pytest.param("namespace_id=ns&limit=%2B1", "limit", id="limit-plus-sign"),
    pytest.param("namespace_id=ns&limit=1e1", "limit", id="limit-exponent"),
    pytest.param("namespace_id=ns&limit=%D9%A1", "limit", id="limit-arabic-digit"),
    pytest.param("namespace_id=ns&limit=" + "9" * 5000, "limit", id="limit-5000-digits"),
    pytest.param("limit=5", "namespace_id", id="namespace-missing"),
    pytest.param("", "namespace_id", id="no-parameters"),
    pytest.param("namespace_id=", "namespace_id", id="namespace-empty"),
    pytest.param("namespace_id=a%00b", "namespace_id", id="namespace-nul"),
    pytest.param("namespace_id=a%1Fb", "namespace_id", id="namespace-ctrl"),
    pytest.param("namespace_id=" + LONG_ID, "namespace_id", id="namespace-256-chars"),
]


@pytest.mark.parametrize(("query", "field"), BAD_CAPTURE_QUERIES)
def test_capture_by_get_with_bad_parameters_is_refused_and_leases_nothing(api, world, query, field):
    before = snapshot()
    assert_client_error(api.get(f"/v1/task/capture?{query}"), 400, field=field)
    assert snapshot() == before


@pytest.mark.parametrize(("query", "field"), BAD_CAPTURE_QUERIES)
def test_capture_by_post_with_bad_query_parameters_is_refused_and_leases_nothing(
    api, world, query, field
):
    before = snapshot()
    assert_client_error(api.post(f"/v1/task/capture?{query}"), 400, field=field)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"namespace_id": "ns", "limit": 0}, "limit", id="limit-0"),
        pytest.param({"namespace_id": "ns", "limit": 1001}, "limit", id="limit-1001"),
        pytest.param({"namespace_id": "ns", "limit": -1}, "limit", id="limit-negative"),
        pytest.param({"namespace_id": "ns", "limit": 10**30}, "limit", id="limit-huge"),
        pytest.param({"namespace_id": "ns", "limit": "abc"}, "limit", id="limit-abc"),
        pytest.param({"namespace_id": "ns", "limit": "1.5"}, "limit", id="limit-string-1.5"),
        pytest.param({"namespace_id": "ns", "limit": 1.5}, "limit", id="limit-float"),
        pytest.param({"namespace_id": "ns", "limit": 1.0}, "limit", id="limit-integral-float"),
        pytest.param({"namespace_id": "ns", "limit": True}, "limit", id="limit-bool"),
        pytest.param({"namespace_id": "ns", "limit": None}, "limit", id="limit-null"),
        pytest.param({"namespace_id": "ns", "limit": [1]}, "limit", id="limit-list"),
        pytest.param({"limit": 1}, "namespace_id", id="namespace-missing"),
        pytest.param({"namespace_id": 5}, "namespace_id", id="namespace-number"),
        pytest.param({"namespace_id": None}, "namespace_id", id="namespace-null"),
        pytest.param({"namespace_id": ""}, "namespace_id", id="namespace-empty"),
        pytest.param({"namespace_id": "a\x00b"}, "namespace_id", id="namespace-nul"),
        pytest.param({"namespace_id": LONG_ID}, "namespace_id", id="namespace-256-chars"),
        pytest.param({"namespace_id": "ns", "status": "idle"}, "status", id="unknown-field"),
    ],
)
def test_capture_by_post_with_a_bad_body_is_refused_and_leases_nothing(api, world, body, field):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/task/capture", body), 400, field=field)
    assert snapshot() == before


@pytest.mark.parametrize("raw", NOT_JSON)
def test_capture_by_post_with_invalid_json_is_refused(api, world, raw):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/task/capture", raw), 400)
    assert snapshot() == before


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'[{"namespace_id": "ns"}]', id="list"),
        pytest.param(b'"ns"', id="string"),
        pytest.param(b"5", id="number"),
        pytest.param(b"true", id="bool"),
    ],
)
def test_capture_by_post_with_a_body_that_is_not_an_object_is_refused(api, world, raw):
    before = snapshot()
    assert_client_error(send(api, "POST", "/v1/task/capture", raw), 400)
    assert snapshot() == before


@pytest.mark.parametrize("content_type", OTHER_MEDIA_TYPES)
def test_capture_by_post_in_another_media_type_answers_415(api, world, content_type):
    before = snapshot()
    r = send(api, "POST", "/v1/task/capture", b"namespace_id=ns", content_type=content_type)
    assert_client_error(r, 415)
    assert snapshot() == before


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(("GET", "/v1/task/capture?namespace_id=no-such-ns", b""), id="get"),
        pytest.param(("GET", "/v1/task/capture?namespace_id=no-such-ns&limit=5", b""), id="get-5"),
        pytest.param(("POST", "/v1/task/capture?namespace_id=no-such-ns", b""), id="post-query"),
        pytest.param(("POST", "/v1/task/capture", {"namespace_id": "no-such-ns"}), id="post"),
        pytest.param(("GET", "/v1/task/capture?namespace_id=" + MAX_ID, b""), id="get-255"),
    ],
)
def test_capture_from_an_unregistered_namespace_answers_404(api, world, request_):
    method, path, body = request_
    before = snapshot()
    assert_client_error(send(api, method, path, body), 404)
    assert snapshot() == before


@pytest.mark.parametrize("limit", ["1", "1000"])
def test_capture_accepts_limits_at_the_edges_of_the_range(api, world, limit):
    r = api.get(f"/v1/task/capture?namespace_id=ns&limit={limit}")
    assert r.status_code == 200, r.content
    captured = sorted(t["id"] for t in r.json()["list"])
    # Two tasks are capturable: the idle one and the failed one with retries left.
    assert len(captured) == min(int(limit), 2)
    assert set(captured) <= {"idle-1", "failed-1"}


# --- GET /v1/task (list) ---------------------------------------------------


def cursor_for(raw_querystring: str) -> str:
    return base64.b64encode(raw_querystring.encode()).decode()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        pytest.param("page_size=0", "page_size", id="page_size-0"),
        pytest.param("page_size=1001", "page_size", id="page_size-1001"),
        pytest.param("page_size=-1", "page_size", id="page_size-negative"),
        pytest.param("page_size=abc", "page_size", id="page_size-abc"),
        pytest.param("page_size=1.5", "page_size", id="page_size-float"),
        pytest.param("page_size=", "page_size", id="page_size-empty"),
        pytest.param("page_size=" + "9" * 5000, "page_size", id="page_size-5000-digits"),
        pytest.param("cursor=garbage", "cursor", id="cursor-garbage"),
        pytest.param("cursor=%%%", "cursor", id="cursor-percent-signs"),
        pytest.param("cursor=" + cursor_for("hello"), "cursor", id="cursor-not-a-cursor"),
        pytest.param("cursor=%C3%A9t%C3%A9", "cursor", id="cursor-non-ascii"),
        pytest.param("cursor=" + cursor_for("r=x"), "cursor", id="cursor-bad-reverse"),
        pytest.param("cursor=" + cursor_for("o=-5"), "cursor", id="cursor-bad-offset"),
        pytest.param("cursor=" + cursor_for("p=a%00b"), "cursor", id="cursor-nul-position"),
        pytest.param("cursor=" + cursor_for("p=" + LONG_ID), "cursor", id="cursor-long-pos"),
        pytest.param("status=bogus", "status", id="status-unknown"),
        pytest.param("status=idle&status=bogus", "status", id="status-one-unknown"),
        pytest.param("namespace_id=" + LONG_ID, "namespace_id", id="namespace-256-chars"),
        pytest.param("namespace_id=a%00b", "namespace_id", id="namespace-nul"),
    ],
)
def test_list_tasks_with_bad_parameters_is_refused(api, world, query, field):
    before = snapshot()
    assert_client_error(api.get(f"/v1/task?{query}"), 400, field=field)
    assert snapshot() == before


@pytest.mark.parametrize("page_size", ["1", "1000"])
def test_list_tasks_accepts_page_sizes_at_the_edges_of_the_range(api, world, page_size):
    r = api.get(f"/v1/task?namespace_id=ns&page_size={page_size}")
    assert r.status_code == 200, r.content
    assert len(r.json()["list"]) == min(int(page_size), 4)


# --- ids in the path -------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/task/a%00b",
        "/v1/task/%00",
        "/v1/task/a%1Fb",
        "/v1/task/a%00b/",
        f"/v1/task/{LONG_ID}",
        "/v1/namespace/a%00b",
        "/v1/namespace/%1F",
        "/v1/namespace/a%00b/",
        f"/v1/namespace/{LONG_ID}",
    ],
)
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_path_id_no_task_or_namespace_could_have_is_refused_without_a_5xx(api, world, method, path):
    before = snapshot()
    assert_client_error(send(api, method, path))
    assert snapshot() == before


def test_nul_in_a_task_path_id_answers_4xx_and_deletes_nothing(api, world):
    make_task("ab", "ns")
    before = snapshot()
    assert_client_error(api.delete("/v1/task/a%00b"))
    assert_client_error(api.get("/v1/task/a%00b"))
    assert snapshot() == before
    assert Task.objects.filter(pk="ab").exists()


def test_namespace_path_ids_at_255_characters_are_looked_up(api):
    make_namespace(MAX_ID)
    r = api.get(f"/v1/namespace/{MAX_ID}")
    assert r.status_code == 200, r.content
    assert next(iter(r.json().items())) == ("id", MAX_ID)


# --- bodies beyond the size limit ------------------------------------------

HUGE = "p" * (3 * 1024 * 1024)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/namespace", {"id": "big", "pad": HUGE}),
        ("POST", "/v1/task", {"id": "big", "namespace_id": "ns", "pad": HUGE}),
        ("PUT", "/v1/task/release", {"status": "done", "task_ids": ["busy-1"], "pad": HUGE}),
        ("POST", "/v1/task/capture", {"namespace_id": "ns", "pad": HUGE}),
    ],
)
def test_body_beyond_the_size_limit_answers_413_and_changes_nothing(api, world, method, path, body):
    before = snapshot()
    assert_client_error(send(api, method, path, body), 413)
    assert snapshot() == before


# --- methods an endpoint does not offer ------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/namespace"),
        ("DELETE", "/v1/namespace"),
        ("PUT", "/v1/namespace/ns"),
        ("POST", "/v1/namespace/ns"),
        ("PUT", "/v1/task"),
        ("DELETE", "/v1/task"),
        ("PATCH", "/v1/task/idle-1"),
        ("PUT", "/v1/task/idle-1"),
        ("POST", "/v1/task/idle-1"),
        ("GET", "/v1/task/release"),
        ("POST", "/v1/task/release"),
        ("DELETE", "/v1/task/release"),
        ("PUT", "/v1/task/capture"),
        ("DELETE", "/v1/task/capture"),
    ],
)
def test_method_an_endpoint_does_not_offer_answers_405_json_and_changes_nothing(
    api, world, method, path
):
    before = snapshot()
    assert_client_error(send(api, method, path, {"status": "done", "task_ids": ["busy-1"]}), 405)
    assert snapshot() == before


@pytest.mark.parametrize(
    "path",
    [
        "/v1/namespace",
        "/v1/namespace/ns",
        "/v1/task",
        "/v1/task/idle-1",
        "/v1/task/capture",
        "/v1/task/release",
    ],
)
def test_options_request_never_answers_5xx_and_changes_nothing(api, world, path):
    before = snapshot()
    r = api.options(path)
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.content)
    assert snapshot() == before


# --- Bodies the JSON parser itself must refuse ------------------------------------------

NESTED = {depth: b"[" * depth + b"]" * depth for depth in (1000, 5000)}


@pytest.mark.parametrize("depth", sorted(NESTED))
@pytest.mark.parametrize(
    ("method", "path", "wrap"),
    [
        ("POST", "/v1/task", lambda b: b),
        ("POST", "/v1/namespace", lambda b: b'{"id": ' + b + b"}"),
        ("PUT", "/v1/task/release", lambda b: b'{"status": "done", "task_ids": ' + b + b"}"),
        ("PUT", "/v1/task/extend", lambda b: b'{"leases": ' + b + b"}"),
        ("POST", "/v1/task/capture", lambda b: b'{"namespace_id": ' + b + b"}"),
    ],
)
def test_deeply_nested_bodies_are_refused(api, world, method, path, wrap, depth):
    before = snapshot()
    assert_client_error(send(api, method, path, wrap(NESTED[depth])), 400)
    assert snapshot() == before


@pytest.mark.parametrize(
    "body",
    [
        f'{{"status": "{SURROGATE}", "task_ids": ["idle-1"]}}',
        f'{{"status": "done", "task_ids": ["{SURROGATE}"]}}',
        f'{{"status": "done", "task_ids": ["idle-1"], "{SURROGATE}": 1}}',
        f'{{"status": "done", "leases": [{{"id": "busy-1", "lease_token": "{SURROGATE}"}}]}}',
        '{"status": "done", "task_ids": ["idle-1"], "x": NaN}',
        b'{"status": "done", "task_ids": ["\xff"]}',
    ],
)
def test_strings_that_are_not_unicode_are_refused(api, world, body):
    before = snapshot()
    body = body if isinstance(body, bytes) else body.encode()
    response = assert_client_error(send(api, "PUT", "/v1/task/release", body), 400)
    assert "JSON" in response["detail"]
    assert snapshot() == before


@pytest.mark.parametrize(
    "path",
    [
        "/v1/task/capture?namespace_id=%ED%A0%80",
        "/v1/task?namespace_id=%ED%A0%80",
        "/v1/task?status=%ED%A0%80",
        "/v1/task/%ED%A0%80",
        "/v1/namespace/%ED%A0%80",
    ],
)
def test_an_undecodable_query_or_path_still_answers_json(api, world, path):
    response = api.get(path)
    assert response.status_code < 500, response.content
    assert response.status_code == 204 or response["Content-Type"].startswith("application/json")


def test_an_error_message_always_renders_even_when_it_is_not_unicode():
    from django.utils.translation import gettext_lazy

    from taskq_project.api import FastJSONRenderer

    # A lazy string sends orjson's output through the fallback encoder; the
    # lone surrogate is what once made that fallback raise.
    data = {"detail": "bad \ud800 id", "hint": gettext_lazy("This field is required.")}
    rendered = FastJSONRenderer().render(data)
    assert json.loads(rendered) == {"detail": "bad \ud800 id", "hint": "This field is required."}
