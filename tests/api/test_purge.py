"""POST /v1/namespace/{id}/purge: operators delete a namespace's tasks by state."""

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apikeys_app.services import create_token
from namespaces_app.models import Namespace
from tasks_app.models import Attempt, Task
from tasks_app.services import capture_tasks, purge_namespace, release_tasks
from tests.factories import make_namespace, make_task, make_tasks
from tests.utils import database_url_of_test_database

pytestmark = pytest.mark.django_db

EVERY_STATE = {
    "idle": 2,
    "scheduled": 1,
    "in_progress": 1,
    "lease_expired": 1,
    "done": 3,
    "failed_retry": 1,
    "failed_final": 2,
}


def client_with(role: str, namespaces: tuple[str, ...] = ()) -> APIClient:
    _, secret = create_token(name=f"{role}-token", role=role, namespaces=namespaces)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def one_of_every_state(clock, namespace_id: str = "ns") -> None:
    """The tasks of EVERY_STATE, in namespace `namespace_id`."""
    p = f"{namespace_id}-"
    # No retry left, so the next capture does not take it again.
    make_tasks(namespace_id, 1, prefix=f"{p}expired-", timeout=10, retries_left=0)
    capture_tasks(namespace_id=namespace_id, limit=1)
    clock.advance(11)
    make_tasks(namespace_id, 1, prefix=f"{p}leased-")
    capture_tasks(namespace_id=namespace_id, limit=1)
    make_tasks(namespace_id, 2, prefix=f"{p}idle-")
    make_task(f"{p}scheduled", namespace_id, delay=600)
    make_tasks(namespace_id, 3, prefix=f"{p}done-", status="done")
    make_tasks(namespace_id, 1, prefix=f"{p}retry-", status="failed", retries_left=2)
    make_tasks(namespace_id, 2, prefix=f"{p}final-", status="failed", retries_left=0)


def counts(api: APIClient, namespace_id: str = "ns") -> dict[str, int]:
    r = api.get(f"/v1/namespace/{namespace_id}/stats")
    assert r.status_code == 200, r.content
    return r.json()["counts"]


def purge(api: APIClient, body: object, namespace_id: str = "ns"):
    return api.post(f"/v1/namespace/{namespace_id}/purge", body, format="json")


def test_purge_deletes_the_states_named_and_says_how_many(api, namespace, clock):
    make_namespace("other")
    one_of_every_state(clock)
    one_of_every_state(clock, "other")
    assert counts(api) == EVERY_STATE

    r = purge(api, {"states": ["done", "failed_final"]})
    assert r.status_code == 200, r.content
    assert r.json() == {"id": "ns", "deleted": 5, "by_state": {"done": 3, "failed_final": 2}}
    assert counts(api) == {**EVERY_STATE, "done": 0, "failed_final": 0}
    assert counts(api, "other") == EVERY_STATE


@pytest.mark.parametrize("state", list(EVERY_STATE))
def test_each_state_can_be_purged_alone(api, namespace, clock, state):
    one_of_every_state(clock)
    r = purge(api, {"states": [state]})
    assert r.json()["by_state"] == {state: EVERY_STATE[state]}
    assert counts(api) == {**EVERY_STATE, state: 0}


def test_purge_with_older_than_keeps_the_tasks_changed_since(api, namespace, clock):
    make_tasks("ns", 3, prefix="old-", status="done")
    clock.advance(100)
    make_tasks("ns", 2, prefix="new-", status="done")
    clock.advance(50)
    r = purge(api, {"states": ["done"], "older_than": 150.1})
    assert r.json()["deleted"] == 0
    r = purge(api, {"states": ["done"], "older_than": 149.9})
    assert r.json()["deleted"] == 3
    assert sorted(Task.objects.values_list("id", flat=True)) == ["new-000000", "new-000001"]


def test_a_purged_task_takes_its_attempt_history_with_it(api, namespace):
    make_tasks("ns", 2)
    capture_tasks(namespace_id="ns", limit=2)
    release_tasks(status="failed", task_ids=["t000000", "t000001"])
    assert Attempt.objects.count() == 2
    assert purge(api, {"states": ["failed_retry"]}).json()["deleted"] == 2
    assert Attempt.objects.count() == 0


def test_purging_leases_frees_the_slots_of_a_capped_namespace(api, namespace):
    Namespace.objects.filter(pk="ns").update(max_in_flight=2)
    make_tasks("ns", 5)
    held = capture_tasks(namespace_id="ns", limit=5)
    assert len(held) == 2
    assert capture_tasks(namespace_id="ns", limit=5) == []
    assert purge(api, {"states": ["in_progress"]}).json()["deleted"] == 2
    assert len(capture_tasks(namespace_id="ns", limit=5)) == 2
    # The purged leases' holders find no task to release.
    r = api.put(
        "/v1/task/release",
        {"status": "done", "leases": [{"id": h.id, "lease_token": h.lease_token} for h in held]},
        format="json",
    )
    assert [e["code"] for e in r.json()["errors"]] == ["not_found", "not_found"]


def test_purge_deletes_in_batches_of_short_statements(namespace):
    make_tasks("ns", 35, status="done")
    with CaptureQueriesContext(connection) as queries:
        deleted = purge_namespace(namespace_id="ns", states=["done"], batch_size=10)
    assert deleted == {"done": 35}
    deletes = [q for q in queries.captured_queries if "DELETE FROM tasks_app_task" in q["sql"]]
    assert len(deletes) == 4
    assert all("LIMIT 10" in q["sql"] for q in deletes)


@pytest.mark.django_db(transaction=True)
def test_purge_passes_over_a_task_being_changed_instead_of_waiting(namespace):
    make_tasks("ns", 5, status="done")
    with psycopg.connect(database_url_of_test_database()) as other:
        other.execute("SELECT id FROM tasks_app_task WHERE id = 't000002' FOR UPDATE")
        with connection.cursor() as cursor:
            # A purge that waited on the lock would fail here instead.
            cursor.execute("SET lock_timeout = '2s'")
        assert purge_namespace(namespace_id="ns", states=["done"]) == {"done": 4}
        assert list(Task.objects.values_list("id", flat=True)) == ["t000002"]
    with connection.cursor() as cursor:
        cursor.execute("RESET lock_timeout")
    assert purge_namespace(namespace_id="ns", states=["done"]) == {"done": 1}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "states"),
        ({"states": []}, "states"),
        ({"states": "done"}, "states"),
        ({"states": ["done", "finished"]}, "states"),
        ({"states": ["done"], "older_than": -1}, "older_than"),
        ({"states": ["done"], "older_than": "yesterday"}, "older_than"),
        ({"states": ["done"], "older_than": "60"}, "older_than"),
        ({"states": ["done"], "older_than": False}, "older_than"),
        ({"states": ["done"], "force": True}, "force"),
    ],
)
def test_a_malformed_purge_is_refused_and_deletes_nothing(api, namespace, body, field):
    make_tasks("ns", 2, status="done")
    r = purge(api, body)
    assert r.status_code == 400, r.content
    assert field in r.json()["errors"], r.json()
    assert Task.objects.count() == 2


def test_only_operators_purge(namespace):
    make_tasks("ns", 2, status="done")
    for role in ("worker", "read-only"):
        r = purge(client_with(role), {"states": ["done"]})
        assert r.status_code == 403, (role, r.content)
    assert Task.objects.count() == 2
    assert purge(client_with("operator"), {"states": ["done"]}).json()["deleted"] == 2


def test_purging_an_unknown_or_out_of_scope_namespace_is_a_404(api, namespace):
    make_tasks("ns", 2, status="done")
    r = purge(api, {"states": ["done"]}, namespace_id="nope")
    assert (r.status_code, r.json()["detail"]) == (404, "Namespace 'nope' is not registered.")
    scoped = client_with("operator", namespaces=("other",))
    assert purge(scoped, {"states": ["done"]}).status_code == 404
    assert Task.objects.count() == 2
