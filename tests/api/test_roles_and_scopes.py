"""Token roles, namespace-limited tokens and expiry."""

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from apikeys_app.models import ApiToken
from apikeys_app.services import create_token
from tests.factories import make_namespace, make_tasks

pytestmark = pytest.mark.django_db


def client_for(**token_options) -> APIClient:
    _, secret = create_token(name="t", **token_options)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def world():
    make_namespace("mine")
    make_namespace("theirs")
    make_tasks("mine", 3, prefix="m")
    make_tasks("theirs", 3, prefix="x")


def table_state() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, namespace_id, status, retries_left, updated_at FROM tasks_app_task"
            " ORDER BY id"
        )
        tasks = cursor.fetchall()
        cursor.execute("SELECT id FROM namespaces_app_namespace ORDER BY id")
        return tasks + cursor.fetchall()


# (method, path, body) -> the least role allowed to call it
CALLS = [
    ("get", "/v1/namespace", None, "read-only"),
    ("get", "/v1/namespace/mine", None, "read-only"),
    ("get", "/v1/task?namespace_id=mine", None, "read-only"),
    ("get", "/v1/task/m000000", None, "read-only"),
    ("get", "/v1/task/capture?namespace_id=mine", None, "worker"),
    ("post", "/v1/task/capture?namespace_id=mine", None, "worker"),
    ("put", "/v1/task/release", {"status": "done", "task_ids": ["m000001"]}, "worker"),
    ("post", "/v1/namespace", {"id": "new"}, "operator"),
    ("delete", "/v1/namespace/theirs", None, "operator"),
    ("post", "/v1/task", {"id": "n", "namespace_id": "mine"}, "operator"),
    ("delete", "/v1/task/m000002", None, "operator"),
]
RANK = {"read-only": 0, "worker": 1, "operator": 2}


@pytest.mark.parametrize("role", ["read-only", "worker", "operator"])
@pytest.mark.parametrize(("method", "path", "body", "least"), CALLS)
def test_every_role_against_every_endpoint(world, role, method, path, body, least):
    client = client_for(role=role)
    before = table_state()
    r = getattr(client, method)(path, body, format="json")
    if RANK[role] >= RANK[least]:
        assert r.status_code < 400, (r.status_code, r.content)
    else:
        assert r.status_code == 403
        assert f"needs the {least} role" in r.json()["detail"]
        assert table_state() == before


class TestNamespaceLimitedToken:
    """Another namespace answers exactly as if it did not exist, and never changes."""

    @pytest.fixture
    def limited(self, world):
        return client_for(role="operator", namespaces=["mine"])

    @pytest.fixture
    def unlimited(self, world):
        return client_for()

    def same_as_nonexistent(self, client, unlimited, foreign_path, missing_path, method="get"):
        before = table_state()
        foreign = getattr(client, method)(foreign_path)
        missing = getattr(unlimited, method)(missing_path)
        assert foreign.status_code == missing.status_code
        body_foreign = foreign.content.replace(b"theirs", b"X").replace(b"x000000", b"X")
        body_missing = missing.content.replace(b"ghost", b"X")
        assert body_foreign == body_missing
        assert table_state() == before
        return foreign

    def test_reading_a_foreign_namespace(self, limited, unlimited):
        r = self.same_as_nonexistent(
            limited, unlimited, "/v1/namespace/theirs", "/v1/namespace/ghost"
        )
        assert r.status_code == 204

    def test_reading_a_foreign_task(self, limited, unlimited):
        r = self.same_as_nonexistent(limited, unlimited, "/v1/task/x000000", "/v1/task/ghost")
        assert r.status_code == 204

    def test_deleting_a_foreign_task_or_namespace(self, limited, unlimited):
        r = self.same_as_nonexistent(
            limited, unlimited, "/v1/task/x000000", "/v1/task/ghost", method="delete"
        )
        assert r.status_code == 404
        r = self.same_as_nonexistent(
            limited, unlimited, "/v1/namespace/theirs", "/v1/namespace/ghost", method="delete"
        )
        assert r.status_code == 404

    def test_capturing_from_a_foreign_namespace(self, limited, unlimited):
        r = self.same_as_nonexistent(
            limited,
            unlimited,
            "/v1/task/capture?namespace_id=theirs",
            "/v1/task/capture?namespace_id=ghost",
        )
        assert r.status_code == 404

    def test_listing_sees_only_its_namespaces(self, limited):
        assert limited.get("/v1/namespace").json() == {"list": [{"id": "mine"}]}
        assert limited.get("/v1/task?namespace_id=theirs").json() == {"list": [], "next": None}
        listed = [t["id"] for t in limited.get("/v1/task").json()["list"]]
        assert listed == ["m000000", "m000001", "m000002"]

    def test_a_mixed_release_releases_only_its_own(self, limited, unlimited):
        unlimited.get("/v1/task/capture?namespace_id=theirs&limit=3")
        limited.get("/v1/task/capture?namespace_id=mine&limit=3")
        before = [row for row in table_state() if row[0].startswith("x")]
        r = limited.put(
            "/v1/task/release",
            {"status": "done", "task_ids": ["m000000", "x000000"]},
            format="json",
        )
        body = r.json()
        assert [t["id"] for t in body["list"]] == ["m000000"]
        assert body["errors"] == [
            {"id": "x000000", "code": "not_found", "detail": "Task is not registered."}
        ]
        assert [row for row in table_state() if row[0].startswith("x")] == before

    def test_registering_into_a_foreign_namespace(self, limited, unlimited):
        before = table_state()
        foreign = limited.post("/v1/task", {"id": "n", "namespace_id": "theirs"}, format="json")
        missing = unlimited.post("/v1/task", {"id": "n", "namespace_id": "ghost"}, format="json")
        assert foreign.status_code == missing.status_code == 400
        assert table_state() == before

    def test_registering_a_namespace_outside_its_list_is_forbidden(self, limited):
        r = limited.post("/v1/namespace", {"id": "elsewhere"}, format="json")
        assert r.status_code == 403
        assert "not allowed namespace 'elsewhere'" in r.json()["detail"]

    def test_its_own_namespace_works_as_usual(self, limited):
        assert len(limited.get("/v1/task/capture?namespace_id=mine&limit=5").json()["list"]) == 3


def test_an_expired_token_is_refused(world, settings):
    # The expiry is changed behind the service's back, as another process
    # would see it: no per-process token cache in between.
    settings.TASKQ_TOKEN_CACHE_SECONDS = 0
    token, secret = create_token(name="old", expires_in=timedelta(days=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/v1/namespace").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=token.created_at - timedelta(seconds=1))
    assert client.get("/v1/namespace").status_code == 401


def test_create_api_token_with_role_namespaces_and_expiry(world):
    out = io.StringIO()
    call_command(
        "create_api_token",
        "pool",
        "--role",
        "worker",
        "--namespace",
        "mine",
        "--namespace",
        "other",
        "--expires",
        "30",
        stdout=out,
    )
    lines = out.getvalue().strip().splitlines()
    assert "role worker, mine, other, expires" in lines[0]
    token = ApiToken.objects.get(name="pool")
    assert (token.role, token.namespaces) == ("worker", ["mine", "other"])
    assert token.expires_at is not None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {lines[-1]}")
    assert client.get("/v1/task/capture?namespace_id=mine").status_code == 200
    assert client.post("/v1/namespace", {"id": "z"}, format="json").status_code == 403


def test_create_api_token_without_options_keeps_full_access(world):
    out = io.StringIO()
    call_command("create_api_token", "full", stdout=out)
    token = ApiToken.objects.get(name="full")
    assert (token.role, token.namespaces, token.expires_at) == ("operator", [], None)


def test_a_revocation_by_another_process_takes_effect_within_the_cache_time(world, settings):
    settings.TASKQ_TOKEN_CACHE_SECONDS = 3600
    token, secret = create_token(name="cached")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/v1/namespace").status_code == 200
    # Revoked in the database by another process: this one trusts its cache ...
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=token.created_at)
    assert client.get("/v1/namespace").status_code == 200
    # ... until the cache time is over.
    settings.TASKQ_TOKEN_CACHE_SECONDS = 0
    assert client.get("/v1/namespace").status_code == 401
