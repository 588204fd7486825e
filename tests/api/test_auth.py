"""Bearer-token authentication of the v1 API, the open health check, token storage."""

from io import StringIO

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from apikeys_app.models import ApiToken, hash_secret
from apikeys_app.services import create_token, revoke_token
from namespaces_app.models import Namespace
from tasks_app.models import Task
from tests.factories import make_task, task_state

# (method, path, JSON body) for every /v1/ endpoint, each with and without a trailing slash.
ENDPOINTS = [
    ("get", "/v1/namespace", None),
    ("post", "/v1/namespace", {"id": "new-ns"}),
    ("get", "/v1/namespace/ns", None),
    ("delete", "/v1/namespace/ns", None),
    ("get", "/v1/task?namespace_id=ns", None),
    ("post", "/v1/task", {"id": "new-task", "namespace_id": "ns"}),
    ("get", "/v1/task/t1", None),
    ("delete", "/v1/task/t1", None),
    ("get", "/v1/task/capture?namespace_id=ns&limit=10", None),
    ("post", "/v1/task/capture", {"namespace_id": "ns", "limit": 10}),
    ("put", "/v1/task/release", {"status": "done", "task_ids": ["t2"]}),
]


def _with_slash(path: str) -> str:
    base, sep, query = path.partition("?")
    return f"{base}/{sep}{query}"


ALL_ENDPOINTS = [
    pytest.param(method, path, body, id=f"{method.upper()} {path}")
    for method, path, body in ENDPOINTS
] + [
    pytest.param(method, _with_slash(path), body, id=f"{method.upper()} {_with_slash(path)}")
    for method, path, body in ENDPOINTS
]


def call(client: APIClient, method: str, path: str, body: object):
    if body is None:
        return getattr(client, method)(path)
    return getattr(client, method)(path, body, format="json")


@pytest.fixture
def world(namespace):
    """A namespace with an idle task and an in-progress one, for endpoints to act on."""
    make_task("t1", namespace)
    make_task("t2", namespace, status="in_progress")
    return namespace


def snapshot() -> dict[str, object]:
    return {
        "namespaces": sorted(Namespace.objects.values_list("id", flat=True)),
        "tasks": {
            task_id: task_state(task_id) for task_id in Task.objects.values_list("id", flat=True)
        },
    }


def assert_401_json(response) -> None:
    assert response.status_code == 401, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")


# --- no or bad credentials ------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ALL_ENDPOINTS)
def test_endpoint_without_authorization_header_answers_401_json_and_changes_nothing(
    anon, world, method, path, body
):
    before = snapshot()
    assert_401_json(call(anon, method, path, body))
    assert snapshot() == before


@pytest.mark.parametrize(("method", "path", "body"), ALL_ENDPOINTS)
def test_endpoint_with_wrong_token_answers_401_json_and_changes_nothing(
    anon, world, method, path, body
):
    anon.credentials(HTTP_AUTHORIZATION="Bearer tq_not-a-real-token")
    before = snapshot()
    assert_401_json(call(anon, method, path, body))
    assert snapshot() == before


@pytest.mark.parametrize(("method", "path", "body"), ALL_ENDPOINTS)
def test_endpoint_with_revoked_token_answers_401_json_and_changes_nothing(
    anon, world, method, path, body
):
    token, secret = create_token(name="soon-revoked")
    revoke_token(token=token)
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    before = snapshot()
    assert_401_json(call(anon, method, path, body))
    assert snapshot() == before


MALFORMED_HEADERS = [
    "Bearer",
    "Bearer ",
    "Bearer  ",
    "Bearer {token} extra",
    "Bearer{token}",
    "Token {token}",
    "Basic dXNlcjpwYXNz",
    "{token}",
    "Bearer \u00e9t\u00e9",
    "bearer-{token}",
]


@pytest.mark.parametrize("header", MALFORMED_HEADERS)
@pytest.mark.parametrize(("method", "path", "body"), ALL_ENDPOINTS[: len(ENDPOINTS)])
def test_endpoint_with_malformed_authorization_header_answers_401_json(
    anon, token, world, method, path, body, header
):
    anon.credentials(HTTP_AUTHORIZATION=header.format(token=token))
    before = snapshot()
    assert_401_json(call(anon, method, path, body))
    assert snapshot() == before


def test_revoked_token_stops_working_immediately(api, token, namespace):
    assert api.get("/v1/namespace").status_code == 200
    revoke_token(token=ApiToken.objects.get(hashed_key=hash_secret(token)))
    assert_401_json(api.get("/v1/namespace"))


def test_revoking_one_token_leaves_the_others_working(anon, token):
    other, other_secret = create_token(name="other")
    revoke_token(token=other)
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert anon.get("/v1/namespace").status_code == 200
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {other_secret}")
    assert_401_json(anon.get("/v1/namespace"))


def test_token_prefix_alone_is_not_accepted(anon, token):
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {token[:10]}")
    assert_401_json(anon.get("/v1/namespace"))


def test_token_hash_is_not_accepted_as_a_token(anon, token):
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {hash_secret(token)}")
    assert_401_json(anon.get("/v1/namespace"))


def test_bearer_keyword_is_case_insensitive(anon, token):
    anon.credentials(HTTP_AUTHORIZATION=f"bearer {token}")
    assert anon.get("/v1/namespace").status_code == 200


def test_valid_token_is_accepted_by_every_endpoint(api, world):
    for method, path, body in ENDPOINTS:
        r = call(api, method, path, body)
        assert r.status_code not in (401, 403), (method, path, r.content)
        assert r.status_code < 500, (method, path, r.content)


# --- health check ---------------------------------------------------------


@pytest.mark.django_db
def test_healthz_is_open_and_reports_the_database_ok(anon):
    r = anon.get("/healthz")
    assert r.status_code == 200, r.content
    assert r["Content-Type"].startswith("application/json")
    body = r.json()
    # The overall status may also reflect other components; the database must be ok.
    assert body["database"]["ok"] is True
    assert body["status"] != "down"


@pytest.mark.django_db
def test_healthz_answers_with_the_trailing_slash_too(anon):
    r = anon.get("/healthz/")
    assert r.status_code == 200, r.content
    assert r.json()["database"]["ok"] is True


@pytest.mark.django_db
def test_the_root_page_links_the_admin_docs_schema_and_health_check(anon):
    r = anon.get("/")
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/html")
    html = r.content.decode()
    for link in ('href="/admin/"', 'href="/v1/docs"', 'href="/v1/schema"', 'href="/healthz"'):
        assert link in html, link
    for path in ("/admin/login/", "/v1/docs", "/v1/schema", "/healthz"):
        assert anon.get(path).status_code == 200, path


@pytest.mark.django_db
def test_healthz_ignores_a_bad_token(anon):
    anon.credentials(HTTP_AUTHORIZATION="Bearer nonsense")
    r = anon.get("/healthz")
    assert r.status_code == 200, r.content
    assert r.json()["database"]["ok"] is True


# --- storage of tokens ----------------------------------------------------


@pytest.mark.django_db
def test_token_secret_is_stored_only_as_its_hash():
    row, secret = create_token(name="worker")
    row.refresh_from_db()
    assert row.hashed_key == hash_secret(secret)
    assert row.hashed_key != secret
    for field in ApiToken._meta.concrete_fields:
        value = field.value_from_object(row)
        assert secret not in str(value), f"secret found in ApiToken.{field.name}"
    # The clear prefix is too short to be the token.
    assert len(row.prefix) < len(secret)


@pytest.mark.django_db
def test_each_token_is_distinct():
    _, first = create_token(name="a")
    _, second = create_token(name="a")
    assert first != second
    assert ApiToken.objects.count() == 2


# --- management command ---------------------------------------------------


@pytest.mark.django_db
def test_create_api_token_command_prints_a_working_token_as_its_last_line(anon):
    out = StringIO()
    call_command("create_api_token", "ci-runner", stdout=out)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    secret = lines[-1].strip()
    assert secret

    row = ApiToken.objects.get()
    assert row.name == "ci-runner"
    assert row.hashed_key == hash_secret(secret)
    assert all(secret not in str(f.value_from_object(row)) for f in ApiToken._meta.concrete_fields)

    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    r = anon.get("/v1/namespace")
    assert r.status_code == 200, r.content
    assert r.json() == {"list": []}
    r = anon.post("/v1/namespace", {"id": "made-by-ci"}, format="json")
    assert r.status_code == 201, r.content


@pytest.mark.django_db
def test_create_api_token_command_refuses_an_empty_name():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("create_api_token", "   ", stdout=StringIO())
    assert ApiToken.objects.count() == 0


# --- last_used_at ---------------------------------------------------------


def test_last_used_at_is_set_when_the_token_is_used(api, token):
    row = ApiToken.objects.get(hashed_key=hash_secret(token))
    assert row.last_used_at is None
    assert api.get("/v1/namespace").status_code == 200
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_last_used_at_is_not_set_by_a_rejected_request(anon, token):
    _, revoked_secret = create_token(name="revoked")
    revoked = ApiToken.objects.get(hashed_key=hash_secret(revoked_secret))
    revoke_token(token=revoked)
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {revoked_secret}")
    assert_401_json(anon.get("/v1/namespace"))
    revoked.refresh_from_db()
    assert revoked.last_used_at is None
    unused = ApiToken.objects.get(hashed_key=hash_secret(token))
    assert unused.last_used_at is None


def test_a_cached_token_stops_working_the_moment_it_expires(db, monkeypatch):
    """The per-process cache keeps a token's expiry: it never outlives it."""
    from datetime import timedelta

    from django.utils import timezone

    from apikeys_app import services as token_services
    from apikeys_app.models import ApiToken

    token, secret = create_token(name="short-lived", expires_in=timedelta(hours=1))
    assert token_services.authenticate_secret(secret) is not None  # now cached
    expiry = ApiToken.objects.get(pk=token.pk).expires_at
    assert expiry is not None
    # The database agrees that the hour has passed.
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    monkeypatch.setattr(timezone, "now", lambda: expiry)
    assert token_services.authenticate_secret(secret) is None
