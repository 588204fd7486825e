"""What real work needs, over the API: payloads, results and errors, delays,
priorities, retry backoff, attempt history and namespace settings.

Time is the database clock, frozen and moved by the `clock` fixture; no test
sleeps. Every rejected request is checked to have changed nothing.
"""

from datetime import timedelta

import pytest
from rest_framework.test import APIClient

from tasks_app import sweeper
from tasks_app.models import Attempt, Task
from tests.factories import make_namespace

pytestmark = pytest.mark.django_db

PAYLOAD = {"repo": "git@example.com:x.git", "shards": [1, 2, 3], "name": "ünïcödé ✓"}


def register(api: APIClient, **fields):
    body = {"id": "t1", "namespace_id": "ns", **fields}
    return api.post("/v1/task", body, format="json")


def capture(api: APIClient, limit: int = 1, namespace: str = "ns") -> list[dict]:
    r = api.post(f"/v1/task/capture?namespace_id={namespace}&limit={limit}")
    assert r.status_code == 200, r.content
    return r.json()["list"]


def release(api: APIClient, body: dict):
    return api.put("/v1/task/release", body, format="json")


def lease_of(task: dict, **extra) -> dict:
    return {"id": task["id"], "lease_token": task["lease_token"], **extra}


def unix(value) -> int:
    return int(value.timestamp())


# --- Payloads -------------------------------------------------------------------------


def test_a_payload_is_stored_and_returned_by_capture_and_read_but_not_by_lists(api, namespace):
    r = register(api, payload=PAYLOAD)
    assert r.status_code == 201, r.content
    assert "payload" not in r.json()
    assert api.get("/v1/task/t1").json()["payload"] == PAYLOAD
    listed = api.get("/v1/task?namespace_id=ns").json()["list"]
    assert "payload" not in listed[0]
    asked = api.get("/v1/task?namespace_id=ns&fields=payload").json()["list"]
    assert asked[0]["payload"] == PAYLOAD
    (leased,) = capture(api)
    assert leased["payload"] == PAYLOAD


@pytest.mark.parametrize("payload", ["text", 42, 1.5, [1, "two", None], True, {"a": {"b": []}}])
def test_any_json_value_is_a_payload(api, namespace, payload):
    assert register(api, payload=payload).status_code == 201
    assert api.get("/v1/task/t1").json()["payload"] == payload


def test_a_payload_over_256_kib_is_refused_naming_the_limit_and_nothing_is_stored(api, namespace):
    # 262,144 bytes as compact JSON is the most: a string of n characters is n + 2.
    at_limit = "x" * (256 * 1024 - 2)
    assert register(api, payload=at_limit).status_code == 201
    r = register(api, id="t2", payload=at_limit + "x")
    assert r.status_code == 400, r.content
    assert "262144 bytes" in r.json()["detail"] and "payload" in r.json()["detail"]
    assert not Task.objects.filter(pk="t2").exists()


# --- Results and errors ---------------------------------------------------------------


def test_a_done_release_keeps_the_result_and_a_failed_one_the_error(api, namespace):
    register(api, id="a")
    register(api, id="b")
    first, second = capture(api, limit=2)
    r = release(api, {"status": "done", "leases": [lease_of(first, result={"rows": 7})]})
    assert r.status_code == 200, r.content
    r = release(api, {"status": "failed", "leases": [lease_of(second)], "error": "disk full"})
    assert r.status_code == 200, r.content
    a = api.get("/v1/task/a").json()
    b = api.get("/v1/task/b").json()
    assert (a["result"], a["last_error"]) == ({"rows": 7}, None)
    assert (b["result"], b["last_error"]) == (None, "disk full")


def test_a_lease_s_own_error_wins_over_the_batch_s(api, namespace):
    register(api, id="a")
    register(api, id="b")
    first, second = capture(api, limit=2)
    r = release(
        api,
        {
            "status": "failed",
            "error": "batch",
            "leases": [lease_of(first, error={"code": 7}), lease_of(second)],
        },
    )
    assert r.status_code == 200, r.content
    assert api.get("/v1/task/a").json()["last_error"] == {"code": 7}
    assert api.get("/v1/task/b").json()["last_error"] == "batch"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "failed", "result": 1}, "result"),
        ({"status": "done", "error": "x"}, "error"),
        ({"status": "done", "retry_after": 5}, "retry_after"),
        ({"status": "failed", "error": "x" * (8 * 1024)}, "error"),
        ({"status": "done", "result": "x" * (64 * 1024)}, "result"),
        ({"status": "failed", "retry_after": -1}, "retry_after"),
        ({"status": "failed", "retry_after": "5"}, "retry_after"),
    ],
)
def test_a_release_with_a_misplaced_or_oversized_outcome_is_refused_and_changes_nothing(
    api, namespace, body, field
):
    register(api)
    (leased,) = capture(api)
    r = release(api, {**body, "leases": [lease_of(leased)]})
    assert r.status_code == 400, r.content
    assert field in r.json()["errors"]
    assert Task.objects.get(pk="t1").status == "in_progress"


def test_an_error_inside_a_lease_of_a_done_release_is_refused(api, namespace):
    register(api)
    (leased,) = capture(api)
    r = release(api, {"status": "done", "leases": [lease_of(leased, error="no")]})
    assert r.status_code == 400, r.content
    assert Task.objects.get(pk="t1").status == "in_progress"


# --- Delays ----------------------------------------------------------------------------


def test_a_delayed_task_is_not_captured_before_its_time_and_is_at_it(api, namespace, clock):
    now = clock.now()
    r = register(api, delay=60)
    assert r.status_code == 201, r.content
    assert r.json()["available_at"] == unix(now + timedelta(seconds=60))
    assert r.json()["status"] == "idle"
    clock.advance(59.999999)
    assert capture(api) == []
    clock.advance(microseconds=1)
    assert [t["id"] for t in capture(api)] == ["t1"]


def test_available_at_sets_the_turn_in_unix_seconds(api, namespace, clock):
    at = unix(clock.now()) + 3600
    r = register(api, available_at=at)
    assert r.status_code == 201, r.content
    assert api.get("/v1/task/t1").json()["available_at"] == at
    clock.advance(3599)
    assert capture(api) == []
    clock.advance(1)
    assert len(capture(api)) == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"delay": 5, "available_at": 2_000_000_000},
        {"delay": 5, "status": "in_progress"},
        {"available_at": 2_000_000_000, "status": "done"},
        {"delay": -1},
        {"delay": 1.5},
        {"available_at": "soon"},
    ],
)
def test_a_delay_that_cannot_apply_is_refused_and_nothing_is_stored(api, namespace, fields):
    r = register(api, **fields)
    assert r.status_code == 400, r.content
    assert r.json()["errors"]
    assert not Task.objects.exists()


@pytest.mark.parametrize("status", ["failed", "idle"])
def test_retry_after_holds_a_released_task_back(api, namespace, clock, status):
    register(api)
    (leased,) = capture(api)
    now = clock.now()
    r = release(api, {"status": status, "leases": [lease_of(leased)], "retry_after": 30})
    assert r.status_code == 200, r.content
    assert r.json()["list"][0]["available_at"] == unix(now + timedelta(seconds=30))
    clock.advance(29)
    assert capture(api) == []
    clock.advance(1)
    assert len(capture(api)) == 1


def test_an_idle_release_without_retry_after_is_capturable_at_once(api, namespace, clock):
    register(api)
    (leased,) = capture(api)
    release(api, {"status": "idle", "leases": [lease_of(leased)]})
    assert len(capture(api)) == 1


def test_every_task_shows_when_it_is_capturable_next(api, namespace, clock):
    register(api, id="done-task")
    register(api, id="leased", timeout=40)
    (first,) = capture(api)
    release(api, {"status": "done", "leases": [lease_of(first)]})
    (second,) = capture(api)
    assert api.get("/v1/task/done-task").json()["available_at"] is None
    # Leased with retries left: capturable again once the lease expires.
    assert second["available_at"] == second["lease_expires_at"]


# --- Priorities ------------------------------------------------------------------------


def test_capture_takes_lower_priorities_first_then_by_turn(api, namespace, clock):
    tasks = [("p5-old", 5), ("p0-new", 0), ("p9", 9), ("p0-newer", 0), ("p5-new", 5)]
    for task_id, priority in tasks:
        assert register(api, id=task_id, priority=priority).status_code == 201
        clock.advance(1)
    leased = capture(api, limit=4)
    assert [t["id"] for t in leased] == ["p0-new", "p0-newer", "p5-old", "p5-new"]
    assert [t["priority"] for t in leased] == [0, 0, 5, 5]
    assert [t["id"] for t in capture(api, limit=4)] == ["p9"]


def test_a_delayed_urgent_task_does_not_hold_up_the_others(api, namespace, clock):
    register(api, id="urgent-later", priority=0, delay=60)
    register(api, id="normal-now", priority=3)
    assert [t["id"] for t in capture(api)] == ["normal-now"]


@pytest.mark.parametrize("priority", [-1, 10, "1", 1.0, True])
def test_a_priority_out_of_range_is_refused(api, namespace, priority):
    r = register(api, priority=priority)
    assert r.status_code == 400, r.content
    assert "priority" in r.json()["errors"]
    assert not Task.objects.exists()


# --- Namespace settings and backoff ------------------------------------------------------


def test_a_namespace_shows_its_settings_id_first(api):
    r = api.post("/v1/namespace", {"id": "ns"}, format="json")
    assert r.status_code == 201, r.content
    body = api.get("/v1/namespace/ns").json()
    assert list(body) == [
        "id",
        "default_timeout",
        "default_retries",
        "retry_backoff",
        "history",
        "max_in_flight",
        "paused",
        "paused_at",
    ]
    assert body == {
        "id": "ns",
        "default_timeout": None,
        "default_retries": None,
        "retry_backoff": {"kind": "none"},
        "history": "failures",
        "max_in_flight": None,
        "paused": False,
        "paused_at": None,
    }
    assert api.get("/v1/namespace").json() == {"list": [{"id": "ns"}]}


def test_namespace_defaults_apply_to_tasks_registered_without_them(api):
    r = api.post(
        "/v1/namespace",
        {"id": "ns", "default_timeout": 45, "default_retries": 0},
        format="json",
    )
    assert r.status_code == 201, r.content
    task = register(api).json()
    assert (task["timeout"], task["retries_left"]) == (45, 0)
    own = register(api, id="t2", timeout=5, retries_left=2).json()
    assert (own["timeout"], own["retries_left"]) == (5, 2)


def test_patch_changes_only_the_settings_given(api):
    api.post("/v1/namespace", {"id": "ns", "default_timeout": 45}, format="json")
    backoff = {"kind": "exponential", "base": 2, "max": 60, "jitter": 0.5}
    r = api.patch("/v1/namespace/ns", {"retry_backoff": backoff}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["default_timeout"] == 45
    assert r.json()["retry_backoff"] == {
        "kind": "exponential",
        "base": 2.0,
        "max": 60.0,
        "jitter": 0.5,
    }
    r = api.patch("/v1/namespace/ns", {"default_timeout": None}, format="json")
    assert r.json()["default_timeout"] is None
    assert r.json()["retry_backoff"]["kind"] == "exponential"


@pytest.mark.parametrize(
    "settings",
    [
        {"retry_backoff": {"kind": "exponential"}},
        {"retry_backoff": {"kind": "exponential", "base": 10, "max": 5}},
        {"retry_backoff": {"kind": "exponential", "base": 1, "jitter": 2}},
        {"retry_backoff": {"kind": "none", "base": 1}},
        {"retry_backoff": {"kind": "linear", "base": 1}},
        {"retry_backoff": {"kind": "exponential", "base": 0}},
        {"default_timeout": 0},
        {"default_retries": -1},
        {"history": "some"},
        {"colour": "blue"},
    ],
)
def test_bad_settings_are_refused_and_change_nothing(api, settings):
    api.post("/v1/namespace", {"id": "ns"}, format="json")
    before = api.get("/v1/namespace/ns").json()
    r = api.patch("/v1/namespace/ns", settings, format="json")
    assert r.status_code == 400, r.content
    assert r.json()["errors"]
    assert api.get("/v1/namespace/ns").json() == before
    r = api.post("/v1/namespace", {"id": "other", **settings}, format="json")
    assert r.status_code == 400, r.content
    assert api.get("/v1/namespace/other").status_code == 204


def test_patching_an_unknown_namespace_is_404(api):
    r = api.patch("/v1/namespace/nope", {"default_timeout": 5}, format="json")
    assert r.status_code == 404, r.content


def backoff_namespace(api: APIClient, **backoff) -> None:
    settings = {"kind": "exponential", "base": 10, "max": 25, **backoff}
    r = api.post("/v1/namespace", {"id": "ns", "retry_backoff": settings}, format="json")
    assert r.status_code == 201, r.content


def test_a_failed_lease_waits_the_exponential_backoff_capped_at_max(api, clock):
    backoff_namespace(api)
    register(api, retries_left=5)
    waits = []
    for _ in range(3):
        (leased,) = capture(api)
        now = clock.now()
        r = release(api, {"status": "failed", "leases": [lease_of(leased)]})
        waits.append(r.json()["list"][0]["available_at"] - unix(now))
        clock.advance(waits[-1])
    # Attempts 1, 2 and 3: 10 s, 20 s, then 40 s capped at 25 s.
    assert waits == [10, 20, 25]


def test_retry_after_overrides_the_backoff(api, clock):
    backoff_namespace(api)
    register(api)
    (leased,) = capture(api)
    now = clock.now()
    r = release(api, {"status": "failed", "leases": [lease_of(leased)], "retry_after": 3})
    assert r.json()["list"][0]["available_at"] == unix(now) + 3


def test_an_expired_lease_waits_the_backoff_after_its_expiry_when_swept(api, clock):
    backoff_namespace(api)
    register(api, timeout=5)
    start = clock.now()
    capture(api)
    clock.advance(5)
    assert capture(api) == []
    sweeper.reclaim_expired_leases()
    swept = Task.objects.get(pk="t1")
    assert (swept.status, swept.available_at) == ("failed", start + timedelta(seconds=15))
    clock.advance(9.999999)
    assert capture(api) == []
    clock.advance(microseconds=1)
    assert len(capture(api)) == 1


def test_an_expired_lease_waits_the_backoff_when_nobody_swept_it(api, clock):
    backoff_namespace(api)
    register(api, timeout=5)
    capture(api)
    clock.advance(14.999999)
    assert capture(api) == []
    clock.advance(microseconds=1)
    assert len(capture(api)) == 1


def test_jitter_shortens_the_wait_by_at_most_its_share(api, clock):
    backoff_namespace(api, base=100, max=100, jitter=0.5)
    for n in range(20):
        register(api, id=f"t{n}")
    leased = capture(api, limit=20)
    now = clock.now()
    r = release(api, {"status": "failed", "leases": [lease_of(t) for t in leased]})
    waits = {t["available_at"] - unix(now) for t in r.json()["list"]}
    assert all(50 <= wait <= 100 for wait in waits)
    # Twenty draws all landing on one second would mean no jitter at all.
    assert len(waits) > 1


# --- Attempt history ------------------------------------------------------------------


def test_attempts_list_each_ending_newest_first_with_the_token_name(api, clock):
    api.post("/v1/namespace", {"id": "ns", "history": "all"}, format="json")
    register(api, timeout=10, retries_left=5)
    (one,) = capture(api)
    release(api, {"status": "failed", "leases": [lease_of(one)], "error": "boom"})
    (two,) = capture(api)
    release(api, {"status": "idle", "leases": [lease_of(two)]})
    capture(api)
    clock.advance(10)
    sweeper.reclaim_expired_leases()
    (four,) = capture(api)
    release(api, {"status": "done", "leases": [lease_of(four)], "result": [1]})
    assert capture(api) == []
    r = api.get("/v1/task/t1/attempts")
    assert r.status_code == 200, r.content
    attempts = r.json()["list"]
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [
        (4, "done"),
        (3, "expired"),
        (2, "handed_back"),
        (1, "failed"),
    ]
    assert attempts[0]["result"] == [1]
    assert attempts[3]["error"] == "boom"
    assert {a["leased_by"] for a in attempts} == {"test-worker"}
    assert all(a["ended_at"] >= a["captured_at"] for a in attempts)


def test_the_lease_in_progress_is_the_newest_attempt(api, namespace):
    register(api)
    capture(api)
    (attempt,) = api.get("/v1/task/t1/attempts").json()["list"]
    assert (attempt["attempt"], attempt["outcome"], attempt["ended_at"]) == (1, "in_progress", None)


def test_by_default_done_attempts_are_not_kept(api, namespace):
    register(api)
    (leased,) = capture(api)
    release(api, {"status": "done", "leases": [lease_of(leased)]})
    assert api.get("/v1/task/t1/attempts").json() == {"list": []}
    assert not Attempt.objects.exists()


def test_a_lease_taken_over_after_expiry_ends_as_expired(api, namespace, clock):
    register(api, timeout=5)
    capture(api)
    clock.advance(5)
    capture(api)
    attempts = api.get("/v1/task/t1/attempts").json()["list"]
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(2, "in_progress"), (1, "expired")]


def test_an_operator_ending_a_lease_records_it_as_cancelled(api, namespace):
    from tasks_app.services import OperatorAction, apply_operator_action

    register(api)
    capture(api)
    apply_operator_action(action=OperatorAction.CANCEL_LEASE, task_ids=["t1"])
    attempts = api.get("/v1/task/t1/attempts").json()["list"]
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "cancelled")]


def test_the_history_keeps_the_last_ten_attempts(api, clock):
    api.post("/v1/namespace", {"id": "ns", "history": "all"}, format="json")
    register(api, retries_left=20)
    for _ in range(13):
        (leased,) = capture(api)
        release(api, {"status": "failed", "leases": [lease_of(leased)]})
    attempts = [a["attempt"] for a in api.get("/v1/task/t1/attempts").json()["list"]]
    assert attempts == list(range(13, 3, -1))


def test_attempts_of_an_unknown_task_answer_204(api, namespace):
    assert api.get("/v1/task/nope/attempts").status_code == 204


def test_an_id_ending_in_attempts_cannot_be_registered(api, namespace):
    r = register(api, id="x/attempts")
    assert r.status_code == 400, r.content
    assert not Task.objects.exists()


def test_a_deleted_task_takes_its_attempts_with_it(api, namespace):
    register(api)
    (leased,) = capture(api)
    release(api, {"status": "failed", "leases": [lease_of(leased)]})
    assert Attempt.objects.count() == 1
    assert api.delete("/v1/task/t1").status_code == 204
    assert not Attempt.objects.exists()


# --- The seed's requests ----------------------------------------------------------------


def test_a_seed_registration_behaves_as_before(api, clock):
    make_namespace("Infra")
    r = api.post(
        "/v1/task",
        {"id": "Backup", "namespace_id": "Infra", "timeout": 360, "retries_left": 5},
        format="json",
    )
    assert r.status_code == 201, r.content
    body = r.json()
    assert {k: body[k] for k in ("id", "namespace_id", "timeout", "retries_left", "status")} == {
        "id": "Backup",
        "namespace_id": "Infra",
        "timeout": 360,
        "retries_left": 5,
        "status": "idle",
    }
    stored = Task.objects.get(pk="Backup")
    # Its turn is its registration (FIFO), and capture takes it now.
    assert stored.available_at == stored.created_at <= clock.now()
    assert (body["priority"], body["available_at"]) == (0, unix(stored.available_at))
    defaults = api.post("/v1/task", {"id": "B2", "namespace_id": "Infra"}, format="json").json()
    assert (defaults["timeout"], defaults["retries_left"]) == (300, 3)


def test_an_exponential_backoff_s_max_defaults_to_an_hour_or_its_base(api):
    r = api.post(
        "/v1/namespace",
        {"id": "a", "retry_backoff": {"kind": "exponential", "base": 2}},
        format="json",
    )
    assert r.json()["retry_backoff"] == {
        "kind": "exponential",
        "base": 2.0,
        "max": 3600.0,
        "jitter": 0.0,
    }
    r = api.post(
        "/v1/namespace",
        {"id": "b", "retry_backoff": {"kind": "exponential", "base": 7200}},
        format="json",
    )
    assert r.json()["retry_backoff"]["max"] == 7200.0


def test_a_retry_already_scheduled_keeps_its_time_when_the_backoff_changes(api, clock):
    backoff_namespace(api)
    register(api)
    (leased,) = capture(api)
    release(api, {"status": "failed", "leases": [lease_of(leased)]})
    due = Task.objects.get(pk="t1").available_at
    api.patch("/v1/namespace/ns", {"retry_backoff": {"kind": "none"}}, format="json")
    assert Task.objects.get(pk="t1").available_at == due
    assert capture(api) == []


def test_a_failed_task_may_be_registered_to_wait(api, namespace, clock):
    r = register(api, status="failed", retries_left=1, delay=5)
    assert r.status_code == 201, r.content
    assert capture(api) == []
    clock.advance(5)
    (leased,) = capture(api)
    # A failed task's capture is a retry.
    assert leased["retries_left"] == 0
