"""Operators steer a namespace: pause and resume, and a cap on its leases."""

import pytest
from rest_framework.test import APIClient

from apikeys_app.services import create_token
from tasks_app.models import Task
from tasks_app.sweeper import reclaim_expired_leases
from tests.factories import make_tasks

pytestmark = pytest.mark.django_db


def client_with(role: str, namespaces: tuple[str, ...] = ()) -> APIClient:
    _, secret = create_token(name=f"{role}-token", role=role, namespaces=namespaces)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def capture(client: APIClient, limit: int = 10) -> list[dict]:
    r = client.post(f"/v1/task/capture?namespace_id=ns&limit={limit}")
    assert r.status_code == 200, r.content
    return r.json()["list"]


def release(client: APIClient, leases: list[dict], status: str = "done"):
    leases_ = [{"id": t["id"], "lease_token": t["lease_token"]} for t in leases]
    return client.put("/v1/task/release", {"status": status, "leases": leases_}, format="json")


def test_a_paused_namespace_leases_nothing_until_resumed(api, namespace):
    make_tasks(namespace, 3)
    r = api.post("/v1/namespace/ns/pause")
    assert r.status_code == 200, r.content
    assert (r.json()["paused"], type(r.json()["paused_at"])) == (True, int)
    assert capture(api) == []
    assert Task.objects.filter(status="idle").count() == 3

    r = api.post("/v1/namespace/ns/resume")
    assert r.status_code == 200, r.content
    assert (r.json()["paused"], r.json()["paused_at"]) == (False, None)
    assert len(capture(api)) == 3


def test_while_paused_registrations_go_on_and_leases_run_to_their_end(api, namespace):
    make_tasks(namespace, 2)
    held = capture(api, limit=1)
    api.post("/v1/namespace/ns/pause")
    r = api.post("/v1/task", {"id": "late", "namespace_id": "ns"}, format="json")
    assert r.status_code == 201
    leases = [{"id": t["id"], "lease_token": t["lease_token"]} for t in held]
    r = api.put("/v1/task/extend", {"leases": leases, "timeout": 60}, format="json")
    assert [t["id"] for t in r.json()["list"]] == [held[0]["id"]]
    r = release(api, held)
    assert [t["status"] for t in r.json()["list"]] == ["done"]
    assert capture(api) == []


def test_pausing_twice_keeps_the_first_pause_and_resuming_twice_is_harmless(api, namespace):
    from namespaces_app.models import Namespace

    api.post("/v1/namespace/ns/pause")
    since = Namespace.objects.get(pk="ns").paused_at
    assert since is not None
    assert api.post("/v1/namespace/ns/pause").json()["paused"] is True
    assert Namespace.objects.get(pk="ns").paused_at == since
    assert api.post("/v1/namespace/ns/resume").json()["paused"] is False
    assert api.post("/v1/namespace/ns/resume").json()["paused"] is False


def test_the_namespace_read_shows_the_controls_and_keeps_the_seed_fields_first(api, namespace):
    body = api.get("/v1/namespace/ns").json()
    assert next(iter(body)) == "id"
    assert (body["paused"], body["paused_at"], body["max_in_flight"]) == (False, None, None)
    # The seed's list keeps its shape.
    assert api.get("/v1/namespace").json() == {"list": [{"id": "ns"}]}


@pytest.mark.parametrize("action", ["pause", "resume"])
def test_only_operators_pause_and_resume(namespace, action):
    for role in ("worker", "read-only"):
        r = client_with(role).post(f"/v1/namespace/ns/{action}")
        assert r.status_code == 403, (role, r.content)
        assert "operator" in r.json()["detail"]
    assert client_with("operator").post(f"/v1/namespace/ns/{action}").status_code == 200


@pytest.mark.parametrize("action", ["pause", "resume"])
def test_an_unknown_or_out_of_scope_namespace_is_a_404(api, namespace, action):
    r = api.post(f"/v1/namespace/nope/{action}")
    assert (r.status_code, r.json()["detail"]) == (404, "Namespace 'nope' is not registered.")
    scoped = client_with("operator", namespaces=("other",))
    assert scoped.post(f"/v1/namespace/ns/{action}").status_code == 404
    assert api.get("/v1/namespace/ns").json()["paused"] is False


@pytest.mark.parametrize("suffix", ["/pause", "/resume", "/stats", "/purge"])
def test_a_namespace_id_may_not_end_with_an_endpoint(api, suffix):
    r = api.post("/v1/namespace", {"id": f"jobs{suffix}"}, format="json")
    assert r.status_code == 400
    assert suffix in r.json()["errors"]["id"][0]


def test_max_in_flight_caps_the_valid_leases(api, namespace, clock):
    make_tasks(namespace, 10, timeout=10)
    r = api.patch("/v1/namespace/ns", {"max_in_flight": 3}, format="json")
    assert (r.status_code, r.json()["max_in_flight"]) == (200, 3)
    first = capture(api, limit=10)
    assert len(first) == 3
    assert capture(api) == []
    release(api, first[:1])
    assert [t["id"] for t in capture(api)] == ["t000003"]
    # An expired lease holds no slot: the three are free again, and no more.
    clock.advance(10)
    assert len(capture(api)) == 3
    assert capture(api) == []


def test_max_in_flight_null_lifts_the_cap_and_zero_is_refused(api, namespace):
    make_tasks(namespace, 4)
    api.patch("/v1/namespace/ns", {"max_in_flight": 1}, format="json")
    assert len(capture(api)) == 1
    r = api.patch("/v1/namespace/ns", {"max_in_flight": 0}, format="json")
    assert r.status_code == 400 and "max_in_flight" in r.json()["errors"]
    r = api.patch("/v1/namespace/ns", {"max_in_flight": None}, format="json")
    assert r.json()["max_in_flight"] is None
    assert len(capture(api)) == 3


def test_a_paused_namespace_with_a_cap_leases_nothing(api, namespace):
    make_tasks(namespace, 2)
    api.patch("/v1/namespace/ns", {"max_in_flight": 5}, format="json")
    api.post("/v1/namespace/ns/pause")
    assert capture(api) == []


def test_without_controls_a_capture_is_one_statement(api, namespace, django_assert_num_queries):
    from tasks_app.services import capture_tasks

    make_tasks(namespace, 2)
    with django_assert_num_queries(1):
        assert len(capture_tasks(namespace_id="ns", limit=2)) == 2


def test_stats_count_every_state_and_the_leases_in_flight(api, namespace, clock):
    make_tasks(namespace, 5, prefix="idle-")
    make_tasks(namespace, 2, prefix="gone-", status="failed", retries_left=0)
    make_tasks(namespace, 1, prefix="again-", status="failed", retries_left=1)
    make_tasks(namespace, 1, prefix="done-", status="done")
    api.post("/v1/task", {"id": "later", "namespace_id": "ns", "delay": 60}, format="json")
    leased = capture(api, limit=3)  # idle first, oldest first
    release(api, leased[:1])
    clock.advance(1)
    short = capture(api, limit=1)
    api.put(
        "/v1/task/extend",
        {"leases": [{"id": short[0]["id"], "lease_token": short[0]["lease_token"]}], "timeout": 1},
        format="json",
    )
    clock.advance(2)  # that lease has expired; the two of the first capture have not

    r = api.get("/v1/namespace/ns/stats")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["counts"] == {
        "idle": 1,
        "scheduled": 1,
        "in_progress": 2,
        "lease_expired": 1,
        "done": 2,
        "failed_retry": 1,
        "failed_final": 2,
    }
    assert body["estimated"] == []
    assert body["in_flight"] == 2
    assert (body["id"], body["paused"], body["max_in_flight"]) == ("ns", False, None)
    # The idle task left has waited since its registration, on the frozen
    # clock exactly three seconds ago.
    assert body["oldest_idle_age_seconds"] == 3.0
    assert body["throughput"] == {
        "last_5_minutes": {"captured": 4, "done": 1, "failed": 0, "expired": 0},
        "last_60_minutes": {"captured": 4, "done": 1, "failed": 0, "expired": 0},
    }

    # Past five minutes, with every lease expired and reclaimed.
    clock.advance(400)
    reclaim_expired_leases()
    assert api.get("/v1/namespace/ns/stats").json()["throughput"] == {
        "last_5_minutes": {"captured": 0, "done": 0, "failed": 0, "expired": 3},
        "last_60_minutes": {"captured": 4, "done": 1, "failed": 0, "expired": 3},
    }


def test_stats_of_an_unknown_or_hidden_namespace_answer_204(api, namespace):
    assert api.get("/v1/namespace/nope/stats").status_code == 204
    scoped = client_with("read-only", namespaces=("other",))
    assert scoped.get("/v1/namespace/ns/stats").status_code == 204
    assert client_with("read-only").get("/v1/namespace/ns/stats").status_code == 200
