"""Fenced leases: tokens, fenced release, and the heartbeat (PUT /v1/task/extend)."""

import pytest
from django.db import connection

from apikeys_app.services import create_token
from tasks_app.services import OperatorAction, apply_operator_action
from tasks_app.sweeper import reclaim_expired_leases
from tests.factories import age_task, make_namespace, make_task, make_tasks


def capture(api, limit=1, namespace="ns"):
    r = api.post("/v1/task/capture", {"namespace_id": namespace, "limit": limit}, format="json")
    assert r.status_code == 200, r.content
    return r.json()["list"]


def release(api, status, leases):
    return api.put(
        "/v1/task/release",
        {
            "status": status,
            "leases": [{"id": t["id"], "lease_token": t["lease_token"]} for t in leases],
        },
        format="json",
    )


def extend(api, leases, timeout=None):
    body = {"leases": [{"id": t["id"], "lease_token": t["lease_token"]} for t in leases]}
    if timeout is not None:
        body["timeout"] = timeout
    return api.put("/v1/task/extend", body, format="json")


def row(task_id):
    """Every column of the task, timestamps to the microsecond."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, retries_left, updated_at, available_at, lease_expires_at, "
            "lease_token::text, attempt FROM tasks_app_task WHERE id = %s",
            [task_id],
        )
        found = cursor.fetchone()
    assert found is not None
    return dict(
        zip(
            [
                "status",
                "retries_left",
                "updated_at",
                "available_at",
                "lease_expires_at",
                "lease_token",
                "attempt",
            ],
            found,
            strict=True,
        )
    )


def expire(task_id):
    age_task(task_id, 3600)


@pytest.fixture
def worker_b(db):
    from rest_framework.test import APIClient

    _, secret = create_token(name="worker-b", role="worker")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


# --- Tokens ------------------------------------------------------------------------------


def test_every_capture_gets_a_new_token_and_counts_its_attempt(api, namespace):
    make_task("a", timeout=1, retries_left=5)
    tokens = []
    for attempt in (1, 2, 3):
        (task,) = capture(api)
        assert task["attempt"] == attempt
        assert isinstance(task["lease_token"], str) and len(task["lease_token"]) >= 32
        tokens.append(task["lease_token"])
        expire("a")
    assert len(set(tokens)) == 3


def test_tokens_are_never_shared_between_tasks_of_one_capture(api, namespace):
    make_tasks(namespace, 50)
    tasks = capture(api, limit=50)
    assert len({t["lease_token"] for t in tasks}) == 50
    assert {t["attempt"] for t in tasks} == {1}


def test_the_token_is_shown_only_to_the_capture(api, namespace):
    make_task("a")
    (task,) = capture(api)
    read = api.get("/v1/task/a").json()
    listed = api.get("/v1/task?namespace_id=ns").json()["list"][0]
    assert "lease_token" not in read
    assert "lease_token" not in listed
    assert read["attempt"] == listed["attempt"] == 1
    assert task["lease_token"] not in api.get("/v1/task?namespace_id=ns").content.decode()


def test_a_task_that_was_never_captured_is_at_attempt_zero(api, namespace):
    make_task("a")
    assert api.get("/v1/task/a").json()["attempt"] == 0


# --- Fenced release ----------------------------------------------------------------------


def test_stale_release_after_a_recapture_is_refused_and_changes_nothing(api, worker_b, namespace):
    make_task("a", timeout=1, retries_left=3)
    (held_by_a,) = capture(api)
    expire("a")
    (held_by_b,) = capture(worker_b)
    before = row("a")

    r = release(api, "done", [held_by_a])

    assert r.status_code == 200
    body = r.json()
    assert body["list"] == []
    assert [(e["id"], e["code"]) for e in body["errors"]] == [("a", "stale_lease")]
    assert "in_progress" in body["errors"][0]["detail"]
    assert row("a") == before
    # B's lease is whole: B's own release goes through.
    assert [t["status"] for t in release(worker_b, "done", [held_by_b]).json()["list"]] == ["done"]


def test_a_release_with_the_current_token_finishes_the_lease(api, namespace):
    make_task("a")
    (task,) = capture(api)
    r = release(api, "done", [task])
    assert r.status_code == 200
    assert r["Cache-Control"] == "no-store"
    body = r.json()
    assert [(t["id"], t["status"], t["attempt"]) for t in body["list"]] == [("a", "done", 1)]
    assert "lease_token" not in body["list"][0]
    assert body["errors"] == []
    assert row("a")["status"] == "done"


@pytest.mark.parametrize("status", ["failed", "idle"])
def test_fenced_release_keeps_the_seed_meaning_of_each_status(api, namespace, status):
    make_task("a", retries_left=2)
    (task,) = capture(api)
    (released,) = release(api, status, [task]).json()["list"]
    assert released["status"] == status
    (again,) = capture(api)
    assert again["retries_left"] == (1 if status == "failed" else 2)


def test_a_stale_token_is_refused_after_the_new_holder_finished(api, worker_b, namespace):
    make_task("a", timeout=1)
    (held_by_a,) = capture(api)
    expire("a")
    (held_by_b,) = capture(worker_b)
    release(worker_b, "done", [held_by_b])
    before = row("a")
    errors = release(api, "failed", [held_by_a]).json()["errors"]
    assert [e["code"] for e in errors] == ["stale_lease"]
    assert row("a") == before


def test_the_holders_second_release_is_not_in_progress(api, namespace):
    make_task("a")
    (task,) = capture(api)
    release(api, "done", [task])
    (error,) = release(api, "failed", [task]).json()["errors"]
    assert error == {
        "id": "a",
        "code": "not_in_progress",
        "detail": "Task is done, not in_progress; nothing changed.",
    }


def test_an_expired_lease_nobody_recaptured_is_still_its_holders_to_release(api, namespace):
    make_task("a", timeout=1)
    (task,) = capture(api)
    expire("a")
    assert [t["status"] for t in release(api, "done", [task]).json()["list"]] == ["done"]


def test_after_the_sweeper_reclaimed_the_lease_the_holder_gets_not_in_progress(api, namespace):
    make_task("a", timeout=1)
    (task,) = capture(api)
    expire("a")
    reclaim_expired_leases()
    before = row("a")
    (error,) = release(api, "done", [task]).json()["errors"]
    assert error["code"] == "not_in_progress"
    assert "failed" in error["detail"]
    assert row("a") == before


def test_a_mixed_fenced_batch_releases_the_valid_leases_and_reports_each_other_id(
    api, worker_b, namespace
):
    make_tasks(namespace, 3, timeout=1)
    first, second, third = capture(api, limit=3)
    expire(second["id"])
    capture(worker_b)  # takes `second` over
    release(api, "done", [third])
    ghost = {"id": "ghost", "lease_token": first["lease_token"]}
    body = release(api, "done", [third, ghost, first, second]).json()
    assert [t["id"] for t in body["list"]] == [first["id"]]
    assert [(e["id"], e["code"]) for e in body["errors"]] == [
        (third["id"], "not_in_progress"),
        ("ghost", "not_found"),
        (second["id"], "stale_lease"),
    ]


def test_an_id_repeated_with_its_token_counts_once(api, namespace):
    make_task("a")
    (task,) = capture(api)
    body = release(api, "done", [task, task, task]).json()
    assert len(body["list"]) == 1
    assert body["errors"] == []


def test_a_token_of_another_task_is_stale(api, namespace):
    make_tasks(namespace, 2)
    first, second = capture(api, limit=2)
    swapped = [{"id": first["id"], "lease_token": second["lease_token"]}]
    before = row(first["id"])
    (error,) = release(api, "done", swapped).json()["errors"]
    assert error["code"] == "stale_lease"
    assert row(first["id"]) == before


def test_a_task_registered_in_progress_has_no_holder_to_fence(api, namespace):
    make_task("a", status="in_progress")
    made_up = {"id": "a", "lease_token": "00000000-0000-4000-8000-000000000000"}
    (error,) = release(api, "done", [made_up]).json()["errors"]
    assert error["code"] == "stale_lease"
    r = api.put("/v1/task/release", {"status": "done", "task_ids": ["a"]}, format="json")
    assert [t["status"] for t in r.json()["list"]] == ["done"]


def test_the_seed_form_still_ends_whichever_lease_the_task_is_under(api, worker_b, namespace):
    # What the README warns of: task_ids cannot tell holders apart.
    make_task("a", timeout=1)
    capture(api)
    expire("a")
    capture(worker_b)
    r = api.put("/v1/task/release", {"status": "done", "task_ids": ["a"]}, format="json")
    assert [t["status"] for t in r.json()["list"]] == ["done"]


def test_seed_form_errors_carry_their_code(api, namespace):
    make_task("idle")
    r = api.put(
        "/v1/task/release", {"status": "done", "task_ids": ["idle", "ghost"]}, format="json"
    )
    assert r.json()["errors"] == [
        {
            "id": "idle",
            "code": "not_in_progress",
            "detail": "Task is idle, not in_progress; nothing changed.",
        },
        {"id": "ghost", "code": "not_found", "detail": "Task is not registered."},
    ]


def test_the_server_can_require_lease_tokens(api, namespace, settings):
    settings.TASKQ_REQUIRE_LEASE_TOKEN = True
    make_tasks(namespace, 2)
    first, second = capture(api, limit=2)
    r = api.put("/v1/task/release", {"status": "done", "task_ids": [first["id"]]}, format="json")
    assert r.status_code == 400
    assert "lease_token" in r.json()["detail"]
    assert "task_ids" in r.json()["errors"]
    assert row(first["id"])["status"] == "in_progress"
    assert [t["id"] for t in release(api, "done", [second]).json()["list"]] == [second["id"]]


def test_without_the_setting_the_seed_form_is_accepted(api, namespace, settings):
    settings.TASKQ_REQUIRE_LEASE_TOKEN = False
    make_task("a")
    capture(api)
    r = api.put("/v1/task/release", {"status": "done", "task_ids": ["a"]}, format="json")
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "done", "task_ids": ["a"], "leases": [{"id": "a", "lease_token": "x"}]}, None),
        ({"status": "done", "leases": []}, "leases"),
        ({"status": "done", "leases": "a"}, "leases"),
        ({"status": "done", "leases": [{"id": "a"}]}, "leases"),
        ({"status": "done", "leases": [{"id": "a", "lease_token": 5}]}, "leases"),
        ({"status": "done", "leases": [{"id": "a", "lease_token": ""}]}, "leases"),
        ({"status": "done", "leases": [{"id": "a", "lease_token": "x" * 65}]}, "leases"),
        ({"status": "done", "leases": [{"id": "a", "lease_token": "a\x00b"}]}, "leases"),
        ({"status": "done", "leases": [{"id": "a", "lease_token": "a\nb"}]}, "leases"),
        ({"status": "done", "leases": [{"id": "a", "lease_token": "x", "token": "y"}]}, "leases"),
        (
            {
                "status": "done",
                "leases": [{"id": "a", "lease_token": "x"}, {"id": "a", "lease_token": "y"}],
            },
            "leases",
        ),
        ({"status": "in_progress", "leases": [{"id": "a", "lease_token": "x"}]}, "status"),
    ],
)
def test_malformed_fenced_releases_are_refused_and_change_nothing(api, namespace, body, field):
    make_task("a")
    (task,) = capture(api)
    for lease in body.get("leases", []) if isinstance(body.get("leases"), list) else []:
        if lease.get("lease_token") == "x":
            lease["lease_token"] = task["lease_token"]
    before = row("a")
    r = api.put("/v1/task/release", body, format="json")
    assert r.status_code == 400, r.content
    assert r.json()["detail"]
    if field is not None:
        assert field in r.json()["errors"]
    assert row("a") == before


def test_more_than_a_thousand_leases_are_refused(api, namespace):
    leases = [{"id": f"t{i}", "lease_token": "x"} for i in range(1001)]
    r = api.put("/v1/task/release", {"status": "done", "leases": leases}, format="json")
    assert r.status_code == 400
    assert "1000" in r.json()["detail"]


# --- Extend (heartbeat) ------------------------------------------------------------------


def test_extend_sets_the_lease_to_end_timeout_seconds_from_now(api, namespace):
    make_task("a", timeout=300, retries_left=2)
    (task,) = capture(api)
    before = row("a")
    r = extend(api, [task], timeout=7200)
    assert r.status_code == 200
    assert r["Cache-Control"] == "no-store"
    (extended,) = r.json()["list"]
    assert extended["lease_token"] == task["lease_token"]
    assert extended["attempt"] == task["attempt"] == 1
    assert extended["lease_expires_at"] - extended["updated_at"] == 7200
    assert r.json()["errors"] == []
    after = row("a")
    assert (
        after["lease_expires_at"]
        == after["updated_at"] + (before["lease_expires_at"] - before["updated_at"]) * 24
    )
    assert after["updated_at"] > before["updated_at"]
    assert after["available_at"] == after["lease_expires_at"]
    assert (after["status"], after["retries_left"], after["attempt"], after["lease_token"]) == (
        "in_progress",
        2,
        1,
        task["lease_token"],
    )


def test_extend_defaults_to_the_tasks_own_timeout(api, namespace):
    make_task("a", timeout=45)
    (task,) = capture(api)
    age_task("a", 30)
    before = row("a")
    (extended,) = extend(api, [task]).json()["list"]
    assert extended["lease_expires_at"] - extended["updated_at"] == 45
    after = row("a")
    assert (after["lease_expires_at"] - after["updated_at"]).total_seconds() == 45
    # The lease really moved: 30 s had passed since the capture.
    assert (after["lease_expires_at"] - before["lease_expires_at"]).total_seconds() > 29
    assert after["updated_at"] > before["updated_at"]


def test_extend_of_the_last_retry_keeps_the_task_out_of_the_capture_index(api, namespace):
    make_task("a", retries_left=0)
    (task,) = capture(api)
    extend(api, [task], timeout=60)
    assert row("a")["available_at"] is None


def test_extend_with_an_old_token_is_refused_and_changes_nothing(api, worker_b, namespace):
    make_task("a", timeout=1)
    (held_by_a,) = capture(api)
    expire("a")
    capture(worker_b)
    before = row("a")
    r = extend(api, [held_by_a], timeout=600)
    assert r.json()["list"] == []
    assert [e["code"] for e in r.json()["errors"]] == ["stale_lease"]
    assert row("a") == before


def test_an_expired_lease_nobody_recaptured_can_be_extended_by_its_holder(api, worker_b, namespace):
    make_task("a", timeout=1)
    (task,) = capture(api)
    expire("a")
    (extended,) = extend(api, [task], timeout=600).json()["list"]
    assert extended["status"] == "in_progress"
    # Capture and the sweeper see the new expiry.
    assert capture(worker_b) == []
    assert reclaim_expired_leases().reclaimed == 0
    assert row("a")["status"] == "in_progress"


def test_extend_after_the_sweeper_reclaimed_is_not_in_progress(api, namespace):
    make_task("a", timeout=1)
    (task,) = capture(api)
    expire("a")
    reclaim_expired_leases()
    before = row("a")
    (error,) = extend(api, [task], timeout=60).json()["errors"]
    assert error["code"] == "not_in_progress"
    assert row("a") == before


def test_a_shortened_lease_expires_when_extend_says(api, worker_b, namespace):
    make_task("a", timeout=3600)
    (task,) = capture(api)
    extend(api, [task], timeout=1)
    age_task("a", 2)
    (recaptured,) = capture(worker_b)
    assert recaptured["attempt"] == 2


def test_heartbeats_keep_a_short_lease_alive_while_other_workers_get_nothing(
    api, worker_b, namespace, clock
):
    make_task("a", timeout=2)
    (task,) = capture(api)
    # Six seconds on the lease clock, three times the timeout, a beat a second.
    for _ in range(6):
        clock.advance(1)
        assert [t["id"] for t in extend(api, [task]).json()["list"]] == ["a"]
        assert capture(worker_b) == []
    assert row("a")["attempt"] == 1
    assert [t["status"] for t in release(api, "done", [task]).json()["list"]] == ["done"]


def test_without_heartbeats_the_same_lease_goes_to_another_worker(api, worker_b, namespace, clock):
    # The control of the test above: the lease really is short.
    make_task("a", timeout=2)
    capture(api)
    clock.advance(2)
    (task,) = capture(worker_b)
    assert task["attempt"] == 2


def test_extend_reports_unknown_and_finished_ids(api, namespace):
    make_tasks(namespace, 2)
    first, second = capture(api, limit=2)
    release(api, "done", [second])
    ghost = {"id": "ghost", "lease_token": first["lease_token"]}
    body = extend(api, [first, ghost, second], timeout=60).json()
    assert [t["id"] for t in body["list"]] == [first["id"]]
    assert [(e["id"], e["code"]) for e in body["errors"]] == [
        ("ghost", "not_found"),
        (second["id"], "not_in_progress"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"leases": []},
        {"task_ids": ["a"]},
        {"leases": "TOKEN", "timeout": 10},
        {"leases": [{"id": "a", "lease_token": "TOKEN"}], "timeout": 0},
        {"leases": [{"id": "a", "lease_token": "TOKEN"}], "timeout": 43_201},
        {"leases": [{"id": "a", "lease_token": "TOKEN"}], "timeout": "10"},
        {"leases": [{"id": "a", "lease_token": "TOKEN"}], "timeout": 1.5},
        {"leases": [{"id": "a", "lease_token": "TOKEN"}], "timeout": True},
        {"leases": [{"id": "a", "lease_token": "TOKEN"}], "status": "done"},
    ],
)
def test_malformed_extends_are_refused_and_change_nothing(api, namespace, body):
    make_task("a")
    (task,) = capture(api)
    for lease in body.get("leases", []) if isinstance(body.get("leases"), list) else []:
        lease["lease_token"] = task["lease_token"]
    before = row("a")
    r = api.put("/v1/task/extend", body, format="json")
    assert r.status_code == 400, r.content
    assert r.json()["detail"]
    assert row("a") == before


def test_extend_accepts_the_longest_timeout(api, namespace):
    make_task("a")
    (task,) = capture(api)
    (extended,) = extend(api, [task], timeout=43_200).json()["list"]
    assert extended["lease_expires_at"] - extended["updated_at"] == 43_200


def test_extend_needs_the_worker_role(namespace):
    from rest_framework.test import APIClient

    make_task("a")
    _, secret = create_token(name="reader", role="read-only")
    reader = APIClient()
    reader.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    r = reader.put("/v1/task/extend", {"leases": [{"id": "a", "lease_token": "x"}]}, format="json")
    assert r.status_code == 403


def test_a_namespace_limited_token_sees_foreign_leases_as_unknown(api, db):
    from rest_framework.test import APIClient

    make_namespace("mine")
    make_namespace("theirs")
    make_task("m", namespace_id="mine")
    make_task("f", namespace_id="theirs")
    (foreign,) = capture(api, namespace="theirs")
    _, secret = create_token(name="limited", role="worker", namespaces=["mine"])
    limited = APIClient()
    limited.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    before = row("f")
    for r in (extend(limited, [foreign], timeout=60), release(limited, "done", [foreign])):
        assert [(e["id"], e["code"]) for e in r.json()["errors"]] == [("f", "not_found")]
    assert row("f") == before


# --- Operators end leases ----------------------------------------------------------------


@pytest.mark.parametrize(
    "action", [OperatorAction.CANCEL_LEASE, OperatorAction.MARK_DONE, OperatorAction.MARK_FAILED]
)
def test_an_operator_ending_a_lease_makes_its_token_stale(api, namespace, action):
    make_task("a", retries_left=3)
    (task,) = capture(api)
    if action != OperatorAction.CANCEL_LEASE:
        expire("a")  # mark done / failed never touch a valid lease
    assert apply_operator_action(action=action, task_ids=["a"]).changed == 1
    assert row("a")["lease_token"] is None
    for r in (extend(api, [task], timeout=60), release(api, "done", [task])):
        assert [e["code"] for e in r.json()["errors"]] == ["stale_lease"]


def test_a_requeued_task_no_longer_answers_to_its_old_token(api, namespace):
    make_task("a")
    (task,) = capture(api)
    release(api, "failed", [task])
    apply_operator_action(action=OperatorAction.REQUEUE, task_ids=["a"])
    assert [e["code"] for e in release(api, "done", [task]).json()["errors"]] == ["stale_lease"]
