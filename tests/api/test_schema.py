"""The OpenAPI schema and its documentation pages."""

from typing import Any

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.django_db

SEED_OPERATIONS = {
    ("/v1/namespace", "get"),
    ("/v1/namespace", "post"),
    ("/v1/namespace/{id}", "get"),
    ("/v1/namespace/{id}", "delete"),
    ("/v1/task", "get"),
    ("/v1/task", "post"),
    ("/v1/task/{id}", "get"),
    ("/v1/task/{id}", "delete"),
    ("/v1/task/capture", "get"),
    ("/v1/task/capture", "post"),
    ("/v1/task/release", "put"),
}
# Beyond the seed, additive.
EXTRA_OPERATIONS = {
    ("/v1/task/extend", "put"),
    ("/v1/task/{id}/attempts", "get"),
    ("/v1/namespace/{id}", "patch"),
    ("/v1/namespace/{id}/pause", "post"),
    ("/v1/namespace/{id}/purge", "post"),
    ("/v1/namespace/{id}/resume", "post"),
    ("/v1/namespace/{id}/stats", "get"),
}


# PyYAML's safe loader in C (libyaml), when PyYAML has it: the same document,
# read ten times faster than by the pure-Python loader.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@pytest.fixture(scope="module")
def served_schema(django_db_blocker: Any) -> bytes:
    # Generated once for the module: a fifth of a second per request.
    from rest_framework.test import APIClient

    with django_db_blocker.unblock():
        r = APIClient().get("/v1/schema")
    assert r.status_code == 200
    content: bytes = r.content
    return content


@pytest.fixture
def schema(served_schema: bytes) -> Any:
    # Parsed for each test: a test may change its copy.
    return yaml.load(served_schema, Loader=SAFE_LOADER)


def test_schema_is_open_and_declares_every_seed_endpoint(schema):
    operations = {
        (path, method)
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert operations == SEED_OPERATIONS | EXTRA_OPERATIONS
    assert schema["openapi"].startswith("3.")


def test_schema_documents_the_seeds_204s(schema):
    for path in ("/v1/namespace/{id}", "/v1/task/{id}"):
        assert "204" in schema["paths"][path]["get"]["responses"]
        assert "204" in schema["paths"][path]["delete"]["responses"]


def test_every_operation_documents_its_error_body(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for code in ("400", "401", "403", "429"):
                response = operation["responses"][code]
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/Error"), (path, method, code)


def test_schema_states_the_bounds(schema):
    capture = schema["paths"]["/v1/task/capture"]["get"]["parameters"]
    limit = next(p for p in capture if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)
    release = schema["components"]["schemas"]["ReleaseRequest"]["properties"]["task_ids"]
    assert release["maxItems"] == 1000
    assert release["items"]["maxLength"] == 255
    registration = schema["paths"]["/v1/task"]["post"]["requestBody"]["content"]["application/json"]
    single, many = registration["schema"]["anyOf"]
    assert single["properties"]["retries_left"]["maximum"] == 2_147_483_647
    assert many["maxItems"] == 1000
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


@pytest.mark.parametrize("page", ["/v1/docs", "/v1/redoc"])
def test_documentation_pages_use_local_static_files_only(anon, page):
    r = anon.get(page)
    assert r.status_code == 200
    html = r.content.decode()
    assert "/static/drf_spectacular_sidecar/" in html
    assert "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/v1/schema"),
        ("delete", "/v1/schema/"),
        ("put", "/v1/docs"),
        ("post", "/v1/redoc"),
    ],
)
def test_errors_of_the_documentation_pages_answer_json(anon, method, path):
    r = getattr(anon, method)(path)
    assert 400 <= r.status_code < 500
    assert r["Content-Type"].startswith("application/json"), (r["Content-Type"], r.content[:80])
    assert r.json()["detail"]


def test_request_bodies_refuse_unknown_fields_as_the_server_does(schema):
    components = schema["components"]["schemas"]
    for name in ("ReleaseRequest", "ExtendRequest", "LeaseRequest", "NamespaceCreateRequest"):
        assert components[name]["additionalProperties"] is False, name


def test_the_schema_states_what_release_and_extend_accept(schema):
    components = schema["components"]["schemas"]
    release = components["ReleaseRequest"]
    assert release["oneOf"] == [{"required": ["task_ids"]}, {"required": ["leases"]}]
    assert release["properties"]["task_ids"]["minItems"] == 1
    assert components["ExtendRequest"]["properties"]["leases"]["minItems"] == 1
    token = components["LeaseRequest"]["properties"]["lease_token"]
    assert (token["minLength"], token["maxLength"], token["pattern"]) == (
        1,
        64,
        "^[^\\x00-\\x1f\\x7f]+$",
    )
    cursor = next(
        p for p in schema["paths"]["/v1/task"]["get"]["parameters"] if p["name"] == "cursor"
    )
    assert cursor["schema"]["minLength"] == 1


# --- The schema against the server ------------------------------------------------------
#
# What the schema allows, the server accepts, and what it refuses, the server
# refuses: each body below is judged by both. OpenAPI 3.0's `nullable` is
# turned into JSON Schema's null type first.


def json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        if "type" in converted:
            converted["type"] = [converted["type"], "null"]
        elif {"$ref", "allOf", "oneOf", "anyOf"} & set(converted):
            converted = {"anyOf": [converted, {"type": "null"}]}
    return converted


def validator(schema: dict, target: dict) -> jsonschema.Draft202012Validator:
    root = {**json_schema(target), "components": json_schema(schema["components"])}
    return jsonschema.Draft202012Validator(root)


def request_schema(schema: dict, path: str, method: str) -> dict:
    return schema["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]


def answer_schema(schema: dict, path: str, method: str, status: int) -> dict:
    answer = schema["paths"][path][method]["responses"][str(status)]
    return answer["content"]["application/json"]["schema"]


def assert_answer_conforms(schema: dict, path: str, method: str, response) -> dict:
    body = response.json()
    answer = validator(schema, answer_schema(schema, path, method, response.status_code))
    errors = [error.message for error in answer.iter_errors(body)]
    assert not errors, (path, method, errors, body)
    return body


# 9999-12-31 23:59:59 UTC, the last second `available_at` takes.
MAX_UNIX_SECONDS = 253_402_300_799


@pytest.mark.parametrize(
    ("fields", "accepted"),
    [
        ({"payload": {"a": [1, "é", None, 1.5, True]}, "priority": 9, "delay": 0}, True),
        ({"payload": None, "priority": 0}, True),
        ({"status": "failed", "available_at": 0}, True),
        ({"available_at": MAX_UNIX_SECONDS}, True),
        ({"status": "in_progress", "timeout": 60}, True),
        ({"id": "a/attempts-b"}, True),
        ({"priority": 10}, False),
        ({"priority": -1}, False),
        ({"available_at": 100, "delay": 5}, False),
        ({"status": "done", "delay": 5}, False),
        ({"status": "in_progress", "available_at": 100}, False),
        ({"available_at": MAX_UNIX_SECONDS + 1}, False),
        ({"delay": -1}, False),
        ({"id": "capture"}, False),
        ({"id": "a/attempts"}, False),
        ({"priorty": 1}, False),
    ],
)
def test_the_registration_schema_allows_exactly_what_the_server_accepts(
    api, schema, namespace, fields, accepted
):
    body = {"id": "t1", "namespace_id": namespace, **fields}
    registration = validator(schema, request_schema(schema, "/v1/task", "post"))
    assert registration.is_valid(body) is accepted
    assert registration.is_valid([body]) is accepted
    r = api.post("/v1/task", body, format="json")
    assert r.status_code == (201 if accepted else 400), r.content
    if accepted:
        assert_answer_conforms(schema, "/v1/task", "post", r)


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        ({"status": "done", "task_ids": ["x"], "result": {"rows": 7}}, True),
        ({"status": "done", "task_ids": ["x"], "result": None}, True),
        ({"status": "failed", "task_ids": ["x"], "error": "disk full", "retry_after": 0}, True),
        ({"status": "idle", "task_ids": ["x"], "retry_after": 60}, True),
        ({"status": "idle", "leases": [{"id": "x", "lease_token": "t", "error": {"e": 1}}]}, True),
        ({"status": "done", "leases": [{"id": "x", "lease_token": "t", "result": None}]}, True),
        ({"status": "done", "task_ids": ["x"], "error": "e"}, False),
        ({"status": "done", "task_ids": ["x"], "error": None}, False),
        ({"status": "done", "task_ids": ["x"], "retry_after": 5}, False),
        ({"status": "failed", "task_ids": ["x"], "result": 1}, False),
        ({"status": "failed", "task_ids": ["x"], "retry_after": -1}, False),
        ({"status": "idle", "leases": [{"id": "x", "lease_token": "t", "result": 1}]}, False),
        ({"status": "done", "leases": [{"id": "x", "lease_token": "t", "error": 1}]}, False),
    ],
)
def test_the_release_schema_allows_exactly_what_the_server_accepts(api, schema, body, accepted):
    release = validator(schema, request_schema(schema, "/v1/task/release", "put"))
    assert release.is_valid(body) is accepted
    r = api.put("/v1/task/release", body, format="json")
    assert r.status_code == (200 if accepted else 400), r.content
    if accepted:
        assert_answer_conforms(schema, "/v1/task/release", "put", r)


@pytest.mark.parametrize(
    ("settings", "accepted"),
    [
        ({"retry_backoff": {"kind": "none"}}, True),
        ({"retry_backoff": {"kind": "exponential", "base": 5}}, True),
        ({"retry_backoff": {"kind": "exponential", "base": 0.5, "max": 60, "jitter": 1}}, True),
        ({"default_timeout": None, "default_retries": 0, "history": "all"}, True),
        ({}, True),
        ({"retry_backoff": {"kind": "none", "base": 1}}, False),
        ({"retry_backoff": {"kind": "exponential"}}, False),
        ({"retry_backoff": {"kind": "exponential", "base": 5, "jitter": 1.5}}, False),
        ({"retry_backoff": {"kind": "exponential", "base": 0}}, False),
        ({"retry_backoff": {"kind": "linear", "base": 5}}, False),
        ({"retry_backoff": None}, False),
        ({"default_timeout": 0}, False),
        ({"default_retries": "3"}, False),
        ({"history": "everything"}, False),
    ],
)
def test_the_namespace_settings_schemas_allow_exactly_what_the_server_accepts(
    api, schema, namespace, settings, accepted
):
    change = validator(schema, request_schema(schema, "/v1/namespace/{id}", "patch"))
    registration = validator(schema, request_schema(schema, "/v1/namespace", "post"))
    assert change.is_valid(settings) is accepted
    assert registration.is_valid({"id": "other", **settings}) is accepted
    r = api.patch(f"/v1/namespace/{namespace}", settings, format="json")
    assert r.status_code == (200 if accepted else 400), r.content
    r = api.post("/v1/namespace", {"id": "other", **settings}, format="json")
    assert r.status_code == (201 if accepted else 400), r.content
    if accepted:
        assert_answer_conforms(schema, "/v1/namespace", "post", r)


def test_every_answer_of_a_task_s_life_conforms_to_the_schema(api, schema, clock):
    r = api.post(
        "/v1/namespace",
        {"id": "ns", "default_timeout": 60, "retry_backoff": {"kind": "exponential", "base": 5}},
        format="json",
    )
    namespace = assert_answer_conforms(schema, "/v1/namespace", "post", r)
    assert list(namespace) == [
        "id",
        "default_timeout",
        "default_retries",
        "retry_backoff",
        "history",
        "max_in_flight",
        "paused",
        "paused_at",
    ]
    for path, method, call in [
        ("/v1/namespace/{id}", "get", lambda: api.get("/v1/namespace/ns")),
        ("/v1/namespace/{id}", "patch", lambda: api.patch("/v1/namespace/ns", {}, format="json")),
    ]:
        assert assert_answer_conforms(schema, path, method, call()) == namespace
    paused = api.post("/v1/namespace/ns/pause")
    assert assert_answer_conforms(schema, "/v1/namespace/{id}/pause", "post", paused)["paused"]
    resumed = api.post("/v1/namespace/ns/resume")
    assert assert_answer_conforms(schema, "/v1/namespace/{id}/resume", "post", resumed) == namespace
    stats = api.get("/v1/namespace/ns/stats")
    assert (
        assert_answer_conforms(schema, "/v1/namespace/{id}/stats", "get", stats)["in_flight"] == 0
    )
    listed = assert_answer_conforms(schema, "/v1/namespace", "get", api.get("/v1/namespace"))
    assert listed == {"list": [{"id": "ns"}]}

    payload = {"src": "s3://b/42.png", "w": 640}
    for registration in (
        {"id": "a", "namespace_id": "ns", "payload": payload},
        [{"id": "b", "namespace_id": "ns"}],
    ):
        r = api.post("/v1/task", registration, format="json")
        assert_answer_conforms(schema, "/v1/task", "post", r)
    captured = assert_answer_conforms(
        schema, "/v1/task/capture", "post", api.post("/v1/task/capture?namespace_id=ns&limit=2")
    )["list"]
    assert [task["payload"] for task in captured] == [payload, None]
    first, second = captured
    extended = assert_answer_conforms(
        schema,
        "/v1/task/extend",
        "put",
        api.put(
            "/v1/task/extend",
            {"leases": [{"id": "a", "lease_token": first["lease_token"]}]},
            format="json",
        ),
    )["list"]
    assert "payload" not in extended[0]
    outcomes: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (first, {"status": "done", "result": {"bytes": 18230}}),
        (second, {"status": "failed", "error": "disk full"}),
    ]
    for lease, outcome in outcomes:
        body = {**outcome, "leases": [{"id": lease["id"], "lease_token": lease["lease_token"]}]}
        released = assert_answer_conforms(
            schema, "/v1/task/release", "put", api.put("/v1/task/release", body, format="json")
        )
        assert released["errors"] == [] and "payload" not in released["list"][0]
    clock.advance(5)  # the backoff of b's first attempt
    api.post("/v1/task/capture?namespace_id=ns")  # b again: attempt 2 in progress

    detail = assert_answer_conforms(schema, "/v1/task/{id}", "get", api.get("/v1/task/a"))
    assert (detail["payload"], detail["result"], detail["last_error"]) == (
        payload,
        {"bytes": 18230},
        None,
    )
    attempts = assert_answer_conforms(
        schema, "/v1/task/{id}/attempts", "get", api.get("/v1/task/b/attempts")
    )["list"]
    assert [a["outcome"] for a in attempts] == ["in_progress", "failed"]
    plain = assert_answer_conforms(schema, "/v1/task", "get", api.get("/v1/task?namespace_id=ns"))
    assert all("payload" not in task for task in plain["list"])
    asked = assert_answer_conforms(
        schema, "/v1/task", "get", api.get("/v1/task?namespace_id=ns&fields=payload")
    )
    assert [task["payload"] for task in asked["list"]] == [payload, None]


def test_the_new_operations_declare_their_answers_and_error_bodies(schema):
    attempts = schema["paths"]["/v1/task/{id}/attempts"]["get"]["responses"]
    assert attempts["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/AttemptList")
    assert "content" not in attempts["204"]
    change = schema["paths"]["/v1/namespace/{id}"]["patch"]["responses"]
    assert change["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Namespace")
    for code in ("400", "401", "403", "404", "413", "415", "429"):
        ref = change[code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/Error"), code
    fields = next(
        p for p in schema["paths"]["/v1/task"]["get"]["parameters"] if p["name"] == "fields"
    )
    assert [e["value"] for e in fields["examples"].values()] == ["payload"]
    components = schema["components"]["schemas"]
    assert "payload" in components["CapturedTask"]["required"]
    assert "payload" not in components["ListedTask"]["required"]
    assert {"payload", "result", "last_error"} <= set(components["TaskDetail"]["required"])
    assert "payload" not in components["LeasedTask"]["properties"]
    assert "payload" not in components["Task"]["properties"]
    assert list(components["NamespaceListItem"]["properties"]) == ["id"]
    assert components["Task"]["properties"]["priority"]["maximum"] == 9
    assert components["Task"]["properties"]["available_at"]["nullable"] is True


def test_every_request_example_is_a_request_its_schema_allows(schema):
    checked = 0
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if not content:
                continue
            body_schema = validator(schema, content["schema"])
            for name, example in content.get("examples", {}).items():
                errors = [e.message for e in body_schema.iter_errors(example["value"])]
                assert not errors, (path, method, name, errors)
                checked += 1
    assert checked >= 8


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/v1/task", "post", {"id": "t1", "namespace_id": "ns", "payload": {"a": "x\x00y"}}),
        ("/v1/task", "post", [{"id": "t1", "namespace_id": "ns", "payload": {"\x00": 1}}]),
        ("/v1/task/release", "put", {"status": "done", "task_ids": ["x"], "result": ["\x00"]}),
        (
            "/v1/task/release",
            "put",
            {"status": "idle", "leases": [{"id": "x", "lease_token": "t", "error": "\x00"}]},
        ),
    ],
)
def test_a_nul_in_a_payload_result_or_error_is_refused_with_a_400(
    api, namespace, path, method, body
):
    # No OpenAPI 3.0 schema can bound the keys of any JSON value; jsonb holds
    # no U+0000, so the server refuses it as bad input instead of failing on it.
    r = getattr(api, method)(path, body, format="json")
    assert r.status_code == 400, r.content
    assert "\\u0000" in r.json()["detail"]
