"""The OpenAPI schema and its documentation pages."""

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
}


@pytest.fixture
def schema(anon):
    r = anon.get("/v1/schema")
    assert r.status_code == 200
    return yaml.safe_load(r.content)


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
