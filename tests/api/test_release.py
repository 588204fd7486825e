"""Finishing leases over PUT /v1/task/release."""

import pytest

from tests.factories import make_tasks, task_state


def release(api, status, ids):
    return api.put("/v1/task/release", {"status": status, "task_ids": ids}, format="json")


def lease(api, n=1):
    return [t["id"] for t in api.get(f"/v1/task/capture?namespace_id=ns&limit={n}").json()["list"]]


def test_release_done_finishes_the_task_for_good(api, namespace):
    make_tasks(namespace, 1)
    ids = lease(api)
    r = release(api, "done", ids)
    assert r.status_code == 200
    assert r["Cache-Control"] == "no-store"
    body = r.json()
    assert [t["status"] for t in body["list"]] == ["done"]
    assert body["list"][0]["lease_expires_at"] is None
    assert body["errors"] == []
    assert lease(api) == []


def test_release_failed_makes_the_task_capturable_again_at_the_cost_of_a_retry(api, namespace):
    make_tasks(namespace, 1, retries_left=1)
    ids = lease(api)
    assert release(api, "failed", ids).json()["list"][0]["retries_left"] == 1
    assert task_state(ids[0])["status"] == "failed"
    again = api.get("/v1/task/capture?namespace_id=ns").json()["list"]
    assert again[0]["retries_left"] == 0


def test_release_idle_hands_the_task_back_without_charging_a_retry(api, namespace):
    make_tasks(namespace, 1, retries_left=1)
    ids = lease(api)
    assert release(api, "idle", ids).json()["list"][0]["status"] == "idle"
    again = api.get("/v1/task/capture?namespace_id=ns").json()["list"]
    assert again[0]["retries_left"] == 1


def test_release_updates_updated_at(api, namespace):
    make_tasks(namespace, 1)
    captured = api.get("/v1/task/capture?namespace_id=ns").json()["list"][0]
    released = release(api, "done", [captured["id"]]).json()["list"][0]
    assert released["updated_at"] >= captured["updated_at"]


def test_release_reports_per_id_errors_and_still_releases_the_rest(api, namespace):
    make_tasks(namespace, 3)
    ids = lease(api, 2)  # t000000, t000001 leased; t000002 idle
    r = release(api, "done", [ids[0], "t000002", "ghost", ids[1]])
    assert r.status_code == 200
    body = r.json()
    assert [t["id"] for t in body["list"]] == ids
    errors = {e["id"]: e["detail"] for e in body["errors"]}
    assert set(errors) == {"t000002", "ghost"}
    assert "idle" in errors["t000002"]
    assert "not registered" in errors["ghost"]
    assert task_state("t000002")["status"] == "idle"


def test_releasing_twice_is_an_error_the_second_time(api, namespace):
    make_tasks(namespace, 1)
    ids = lease(api)
    release(api, "done", ids)
    r = release(api, "failed", ids)
    assert r.json()["list"] == []
    assert r.json()["errors"][0]["id"] == ids[0]
    assert task_state(ids[0])["status"] == "done"


def test_release_with_repeated_ids_releases_once(api, namespace):
    make_tasks(namespace, 1)
    ids = lease(api)
    body = release(api, "done", ids * 3).json()
    assert len(body["list"]) == 1
    assert body["errors"] == []


def test_release_accepts_a_thousand_ids(api, namespace):
    make_tasks(namespace, 1000)
    ids = lease(api, 1000)
    body = release(api, "done", ids).json()
    assert len(body["list"]) == 1000


@pytest.mark.parametrize("count", [1001, 5000])
def test_release_refuses_more_than_a_thousand_ids(api, namespace, count):
    make_tasks(namespace, 1)
    ids = lease(api)
    r = release(api, "done", ids + [f"x{i}" for i in range(count - 1)])
    assert r.status_code == 400
    assert "1000" in r.json()["detail"]
    assert task_state(ids[0])["status"] == "in_progress"


def test_late_release_of_an_expired_lease_still_wins_before_anyone_recaptures(api, namespace):
    from tests.factories import age_task

    make_tasks(namespace, 1, timeout=5)
    ids = lease(api)
    age_task(ids[0], 60)
    assert release(api, "done", ids).json()["list"][0]["status"] == "done"


def test_oversized_body_answers_413_with_json(api, namespace, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    make_tasks(namespace, 1)
    ids = lease(api)
    r = release(api, "done", ids + ["x" * 200] * 100)
    assert r.status_code == 413
    assert "too large" in r.json()["detail"]
    assert task_state(ids[0])["status"] == "in_progress"
