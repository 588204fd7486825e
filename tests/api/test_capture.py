"""Capturing leases over /v1/task/capture."""

import pytest

from tests.factories import age_task, make_namespace, make_task, make_tasks, task_state


def capture(api, namespace="ns", limit=None, method="get"):
    url = f"/v1/task/capture?namespace_id={namespace}"
    if limit is not None:
        url += f"&limit={limit}"
    return getattr(api, method)(url)


def test_capture_leases_tasks_as_in_progress(api, namespace):
    make_tasks(namespace, 3)
    r = capture(api, limit=2)
    assert r.status_code == 200
    tasks = r.json()["list"]
    assert len(tasks) == 2
    assert {t["status"] for t in tasks} == {"in_progress"}
    assert all(t["lease_expires_at"] - t["updated_at"] == 300 for t in tasks)
    assert r["Cache-Control"] == "no-store"
    assert task_state(tasks[0]["id"])["status"] == "in_progress"


def test_capture_defaults_to_one_task(api, namespace):
    make_tasks(namespace, 3)
    assert len(capture(api).json()["list"]) == 1


def test_capture_hands_out_idle_tasks_oldest_registration_first(api, namespace):
    for task_id in ["c", "a", "b"]:
        make_task(task_id)
    got = [capture(api).json()["list"][0]["id"] for _ in range(3)]
    assert got == ["c", "a", "b"]


def test_capture_on_empty_namespace_is_200_with_empty_list(api, namespace):
    r = capture(api, limit=10)
    assert r.status_code == 200
    assert r.json() == {"list": []}


def test_capture_on_unknown_namespace_answers_404(api, db):
    r = capture(api, namespace="nope")
    assert r.status_code == 404
    assert "nope" in r.json()["detail"]


def test_capture_as_post_with_query_string_or_json_body(api, namespace):
    make_tasks(namespace, 5)
    r = api.post("/v1/task/capture?namespace_id=ns&limit=2")
    assert r.status_code == 200
    assert len(r.json()["list"]) == 2
    r = api.post("/v1/task/capture", {"namespace_id": "ns", "limit": 2}, format="json")
    assert r.status_code == 200
    assert len(r.json()["list"]) == 2


def test_capture_answers_with_trailing_slash(api, namespace):
    make_tasks(namespace, 1)
    r = api.get("/v1/task/capture/?namespace_id=ns")
    assert r.status_code == 200
    assert len(r.json()["list"]) == 1


def test_capture_only_touches_its_namespace(api, namespace):
    make_namespace("other")
    make_tasks("other", 3, prefix="o")
    assert capture(api, limit=10).json() == {"list": []}
    assert task_state("o000000")["status"] == "idle"


def test_valid_lease_is_not_captured_again(api, namespace):
    make_tasks(namespace, 1)
    assert len(capture(api).json()["list"]) == 1
    assert capture(api).json()["list"] == []


def test_done_tasks_are_never_captured(api, namespace):
    make_tasks(namespace, 2, status="done")
    assert capture(api, limit=10).json()["list"] == []


def test_capturing_a_failed_task_charges_one_retry(api, namespace):
    make_task("f", status="failed", retries_left=2)
    task = capture(api).json()["list"][0]
    assert task["id"] == "f"
    assert task["retries_left"] == 1


def test_failed_task_without_retries_is_terminal(api, namespace):
    make_task("f", status="failed", retries_left=0)
    assert capture(api).json()["list"] == []
    assert task_state("f")["status"] == "failed"


def test_expired_lease_is_captured_again_and_charged(api, namespace):
    make_task("t", timeout=60, retries_left=2)
    first = capture(api).json()["list"][0]
    assert first["retries_left"] == 2  # leasing an idle task is free
    age_task("t", 61)
    second = capture(api).json()["list"][0]
    assert second["id"] == "t"
    assert second["retries_left"] == 1


def test_lease_that_has_not_expired_yet_is_not_captured(api, namespace):
    make_task("t", timeout=60, retries_left=2)
    capture(api)
    age_task("t", 59)
    assert capture(api).json()["list"] == []


def test_expired_lease_without_retries_is_never_handed_out_again(api, namespace):
    make_task("t", timeout=60, retries_left=0)
    assert capture(api).json()["list"][0]["retries_left"] == 0
    age_task("t", 3600)
    assert capture(api, limit=10).json()["list"] == []


def test_task_registered_with_r_retries_runs_at_most_r_plus_one_times(api, namespace):
    make_task("t", timeout=60, retries_left=2)
    runs = 0
    for _ in range(10):
        got = capture(api).json()["list"]
        if not got:
            break
        runs += 1
        r = api.put("/v1/task/release", {"status": "failed", "task_ids": ["t"]}, format="json")
        assert r.json()["list"][0]["status"] == "failed"
    assert runs == 3
    assert task_state("t") == {
        "status": "failed",
        "retries_left": 0,
        "capturable_later": False,
        "leased": False,
    }


def test_retries_and_expired_leases_take_turns_by_when_they_became_available(api, namespace):
    make_task("leased", timeout=10)
    assert capture(api).json()["list"][0]["id"] == "leased"
    age_task("leased", 3600)  # its lease ran out long before the next task was registered
    make_task("new-idle")
    assert [t["id"] for t in capture(api).json()["list"]] == ["leased"]
    make_task("failed-later", status="failed", retries_left=1)
    assert [t["id"] for t in capture(api).json()["list"]] == ["new-idle"]
    assert [t["id"] for t in capture(api).json()["list"]] == ["failed-later"]


@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_capture_never_returns_more_than_limit(api, namespace, limit):
    make_tasks(namespace, 1200)
    assert len(capture(api, limit=limit).json()["list"]) == limit


def test_tasks_registered_in_one_batch_go_out_in_the_order_given(api, namespace):
    make_tasks(namespace, 30)
    got = [capture(api).json()["list"][0]["id"] for _ in range(30)]
    assert got == [f"t{i:06d}" for i in range(30)]


def test_head_on_capture_is_refused_and_leases_nothing(api, namespace):
    make_tasks(namespace, 1)
    r = api.head("/v1/task/capture?namespace_id=ns")
    assert r.status_code == 405
    assert task_state("t000000")["status"] == "idle"
