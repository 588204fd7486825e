"""The fault-injection checker on synthetic histories: each violation alone, and none.

Every history is small and hand-timed: times are seconds on the clients'
clock, and each request takes 10 ms unless said otherwise.
"""

from typing import Any

import pytest

from tests.faults.checker import ANOMALY_KINDS, KINDS, Report, check

READ_AT = 1_000.0


class History:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def _add(
        self,
        op: str,
        at: float,
        request: Any,
        status: int | None,
        body: Any,
        client: str,
        took: float = 0.01,
    ) -> None:
        self.records.append(
            {
                "op": op,
                "client": client,
                "send": at,
                "recv": at + took,
                "send_wall": at,
                "recv_wall": at + took,
                "request": request,
                "status": status,
                "body": body,
                "error": None if status is not None else "TimeoutError: timed out",
            }
        )

    def register(
        self, *ids: str, at: float = 0.0, status: int | None = 201, retries: int = 2
    ) -> None:
        tasks = [
            {"id": i, "namespace_id": "ns", "timeout": 3, "retries_left": retries} for i in ids
        ]
        body = {"list": tasks} if status == 201 else None
        self._add("register", at, tasks, status, body, "registrar")

    def capture(
        self,
        task_id: str,
        token: str,
        attempt: int,
        at: float,
        client: str = "w0",
        timeout: int = 3,
        took: float = 0.01,
    ) -> None:
        lease = {
            "id": task_id,
            "timeout": timeout,
            "attempt": attempt,
            "lease_token": token,
            "status": "in_progress",
        }
        self._add(
            "capture", at, {"namespace_id": "ns", "limit": 1}, 200, {"list": [lease]}, client, took
        )

    def _fenced(
        self, op: str, task_id: str, token: str, at: float, result: str, client: str, **extra: Any
    ) -> None:
        request = {**extra, "leases": [{"id": task_id, "lease_token": token}]}
        if result == "unknown":
            self._add(op, at, request, None, None, client)
        elif result == "applied":
            self._add(op, at, request, 200, {"list": [{"id": task_id}], "errors": []}, client)
        else:
            error = {"id": task_id, "code": result, "detail": "..."}
            self._add(op, at, request, 200, {"list": [], "errors": [error]}, client)

    def release(
        self,
        task_id: str,
        token: str,
        at: float,
        status: str = "done",
        result: str = "applied",
        client: str = "w0",
    ) -> None:
        self._fenced("release", task_id, token, at, result, client, status=status)

    def extend(
        self,
        task_id: str,
        token: str,
        at: float,
        seconds: int,
        result: str = "applied",
        client: str = "w0",
    ) -> None:
        self._fenced("extend", task_id, token, at, result, client, timeout=seconds)


def task(
    task_id: str,
    status: str = "done",
    attempt: int = 1,
    retries_left: int = 2,
    lease_expires_at: float | None = None,
) -> dict[str, Any]:
    return {
        "id": task_id,
        "status": status,
        "retries_left": retries_left,
        "attempt": attempt,
        "lease_token": None,
        "lease_expires_at": lease_expires_at,
    }


def final(*tasks: dict[str, Any]) -> dict[str, Any]:
    return {"read_at": READ_AT, "tasks": list(tasks)}


def found(report: Report) -> dict[str, int]:
    return {kind: n for kind, n in report.counts().items() if n}


def test_a_clean_history_has_no_violations() -> None:
    h = History()
    h.register("a", "b", "c", "d", "e", at=0.0)
    # Done at once.
    h.capture("a", "A1", 1, at=1.0)
    h.release("a", "A1", at=1.5)
    # Failed, then retried by another worker.
    h.capture("b", "B1", 1, at=1.0)
    h.release("b", "B1", at=1.2, status="failed")
    h.capture("b", "B2", 2, at=1.3, client="w1")
    h.release("b", "B2", at=1.4, client="w1")
    # Kept alive past its timeout by a heartbeat, then done.
    h.capture("c", "C1", 1, at=1.0)
    h.extend("c", "C1", at=2.5, seconds=3)
    h.release("c", "C1", at=4.5)
    # Stalled past the lease: captured again after its expiry; the stale
    # release is refused and the new holder finishes it.
    h.capture("d", "D1", 1, at=1.0)
    h.capture("d", "D2", 2, at=4.1, client="w1")
    h.release("d", "D1", at=5.0, result="stale_lease")
    h.release("d", "D2", at=5.1, client="w1")
    # Handed back idle (no retry charged), a release lost in a timeout, and
    # a capture after a release whose outcome is unknown.
    h.capture("e", "E1", 1, at=1.0)
    h.release("e", "E1", at=1.1, status="idle")
    h.capture("e", "E2", 2, at=1.2)
    h.release("e", "E2", at=1.3, result="unknown")
    h.capture("e", "E3", 3, at=1.4, client="w1")
    h.release("e", "E3", at=1.5, status="idle", client="w1")
    h.capture("e", "E4", 4, at=1.6)
    h.release("e", "E4", at=1.7)
    # A registration that timed out and did not happen, one that did.
    h.register("f", at=2.0, status=None)
    h.register("g", at=2.0, status=None)
    report = check(
        h.records,
        final(
            task("a"),
            task("b", attempt=2, retries_left=1),
            task("c"),
            task("d", attempt=2, retries_left=1),
            task("e", attempt=4),
            task("g", attempt=0, status="failed", retries_left=0),
        ),
    )
    assert report.violations == []
    assert report.anomalies == []
    assert set(report.counts()) == set(KINDS)
    assert report.stats["operations"] == len(h.records)
    assert report.stats["leases_seen"] == 10


def test_an_acknowledged_registration_missing_at_the_end() -> None:
    h = History()
    h.register("x", "y", at=0.0)
    report = check(h.records, final(task("y", status="failed", retries_left=0, attempt=0)))
    assert found(report) == {"lost_registration": 1}
    assert report.violations[0].task_id == "x"


def test_an_acknowledged_done_release_that_did_not_stick() -> None:
    h = History()
    h.register("x", at=0.0)
    h.capture("x", "X1", 1, at=1.0)
    h.release("x", "X1", at=1.5)
    report = check(h.records, final(task("x", status="failed", retries_left=0)))
    assert found(report) == {"lost_done_release": 1}


def test_two_workers_holding_one_task_at_once() -> None:
    h = History()
    h.register("x", at=0.0)
    h.capture("x", "X1", 1, at=1.0)
    # Sent well after the first answer and answered well before its expiry (4.0).
    h.capture("x", "X2", 2, at=2.0, client="w1")
    h.release("x", "X1", at=2.5, result="stale_lease")
    h.release("x", "X2", at=2.6, client="w1")
    report = check(h.records, final(task("x", attempt=2, retries_left=1)))
    assert found(report) == {"double_lease": 1}
    assert "X1" in report.violations[0].detail and "X2" in report.violations[0].detail


@pytest.mark.parametrize(
    ("events", "double"),
    [
        # Re-captured just after the expiry: legitimate.
        ([("capture", "X2", 4.05)], False),
        # Re-captured after the first expiry but before the heartbeat's.
        ([("extend", 2.0, 3, "applied"), ("capture", "X2", 4.5)], True),
        # A heartbeat refused does not keep the lease.
        ([("extend", 2.0, 3, "stale_lease"), ("capture", "X2", 4.5)], False),
        # A heartbeat with an unknown outcome may have shortened it: no proof.
        ([("extend", 2.0, 1, "unknown"), ("capture", "X2", 3.5)], False),
        # A later acknowledged heartbeat overrides an earlier unknown one.
        (
            [("extend", 2.0, 1, "unknown"), ("extend", 3.0, 3, "applied"), ("capture", "X2", 5)],
            True,
        ),
        # A release that timed out may have ended the lease when it was sent.
        ([("release", 1.5, "unknown"), ("capture", "X2", 2.0)], False),
    ],
)
def test_lease_windows(events: list[tuple[Any, ...]], double: bool) -> None:
    h = History()
    h.register("x", at=0.0)
    h.capture("x", "X1", 1, at=1.0)
    for event in events:
        if event[0] == "capture":
            h.capture("x", event[1], 2, at=event[2], client="w1")
        elif event[0] == "extend":
            h.extend("x", "X1", at=event[1], seconds=event[2], result=event[3])
        else:
            h.release("x", "X1", at=event[1], result=event[2])
    report = check(h.records, final(task("x", status="in_progress", attempt=2, retries_left=1)))
    kinds = found(report)
    kinds.pop("stuck_task", None)
    assert kinds == ({"double_lease": 1} if double else {})


def test_captures_whose_requests_overlap_are_judged_in_either_order() -> None:
    h = History()
    h.register("x", "y", at=0.0)
    # Both in flight together; each answered before the other could have ended.
    h.capture("x", "X1", 1, at=1.0, took=0.5)
    h.capture("x", "X2", 2, at=1.2, took=0.5, client="w1")
    # Also in flight together, but the first may have ended (released) early.
    h.capture("y", "Y1", 1, at=1.0, took=0.5)
    h.release("y", "Y1", at=1.1, result="unknown")
    h.capture("y", "Y2", 2, at=1.2, took=0.5, client="w1")
    report = check(
        h.records,
        final(task("x", attempt=2, retries_left=1), task("y", attempt=2, retries_left=1)),
    )
    assert found(report) == {"double_lease": 1}
    assert report.violations[0].task_id == "x"


def test_a_task_run_more_often_than_its_retries_allow() -> None:
    h = History()
    h.register("x", at=0.0, retries=1)
    h.capture("x", "X1", 1, at=1.0)
    h.release("x", "X1", at=1.1, status="failed")
    h.capture("x", "X2", 2, at=1.2)
    h.release("x", "X2", at=1.3, status="failed")
    h.capture("x", "X3", 3, at=1.4)
    h.release("x", "X3", at=1.5, status="failed")
    report = check(h.records, final(task("x", status="failed", attempt=3, retries_left=0)))
    assert found(report) == {"over_run": 1}


def test_an_idle_hand_back_costs_no_run() -> None:
    h = History()
    h.register("x", at=0.0, retries=1)
    h.capture("x", "X1", 1, at=1.0)
    h.release("x", "X1", at=1.1, status="idle", result="unknown")
    h.capture("x", "X2", 2, at=1.2)
    h.release("x", "X2", at=1.3, status="failed")
    h.capture("x", "X3", 3, at=1.4)
    h.release("x", "X3", at=1.5, status="failed")
    report = check(h.records, final(task("x", status="failed", attempt=3, retries_left=0)))
    assert report.violations == []


def test_the_final_attempt_counts_captures_nobody_saw() -> None:
    h = History()
    h.register("x", at=0.0, retries=0)
    h.capture("x", "X1", 1, at=1.0)
    h.release("x", "X1", at=1.1, status="failed")
    report = check(h.records, final(task("x", status="failed", attempt=2, retries_left=0)))
    assert found(report) == {"over_run": 1}


@pytest.mark.parametrize("op", ["release", "extend"])
def test_a_stale_token_that_changed_something(op: str) -> None:
    h = History()
    h.register("x", at=0.0)
    h.capture("x", "X1", 1, at=1.0)
    h.capture("x", "X2", 2, at=4.1, client="w1")
    # Sent after the new holder's capture was answered, and accepted.
    if op == "release":
        h.release("x", "X1", at=5.0)
        h.release("x", "X2", at=5.1, client="w1", result="not_in_progress")
    else:
        h.extend("x", "X1", at=5.0, seconds=3)
        h.release("x", "X2", at=5.1, client="w1")
    report = check(h.records, final(task("x", attempt=2, retries_left=1)))
    assert found(report) == {"stale_token_accepted": 1}


def test_a_stale_request_sent_before_the_new_capture_answered_proves_nothing() -> None:
    h = History()
    h.register("x", at=0.0)
    h.capture("x", "X1", 1, at=1.0)
    h.release("x", "X1", at=4.1)
    h.capture("x", "X2", 2, at=4.1, client="w1")
    h.release("x", "X2", at=4.2, client="w1", result="not_in_progress")
    report = check(h.records, final(task("x", attempt=2, retries_left=1)))
    assert report.violations == []


def test_an_acknowledged_capture_that_the_database_forgot() -> None:
    h = History()
    h.register("x", at=0.0)
    h.capture("x", "X1", 1, at=1.0)
    h.release("x", "X1", at=1.1, status="idle")
    # Surely later, yet the same attempt: the first capture was lost.
    h.capture("x", "X2", 1, at=1.2)
    h.release("x", "X2", at=1.3)
    report = check(h.records, final(task("x", attempt=1)))
    assert found(report) == {"lost_capture": 1}


def test_a_final_attempt_below_one_acknowledged() -> None:
    h = History()
    h.register("x", at=0.0)
    h.capture("x", "X1", 1, at=1.0)
    h.release("x", "X1", at=1.1, status="idle", result="unknown")
    h.capture("x", "X2", 2, at=1.2)
    h.release("x", "X2", at=1.3, result="unknown")
    report = check(h.records, final(task("x", attempt=1)))
    assert found(report) == {"lost_capture": 1}


@pytest.mark.parametrize(
    "state",
    [
        task("x", status="idle", attempt=1),
        task("x", status="failed", retries_left=1, attempt=1),
        task("x", status="in_progress", attempt=1, lease_expires_at=READ_AT - 60),
    ],
    ids=["idle", "failed-with-retries", "in-progress-long-expired"],
)
def test_a_task_stuck_at_the_end(state: dict[str, Any]) -> None:
    h = History()
    h.register("x", at=0.0)
    h.capture("x", "X1", 1, at=1.0)
    h.release("x", "X1", at=1.1, status="idle")
    report = check(h.records, final(state))
    assert found(report) == {"stuck_task": 1}


def test_a_lease_whose_expiry_is_coming_is_not_stuck() -> None:
    h = History()
    h.register("x", at=0.0)
    h.capture("x", "X1", 1, at=1.0, timeout=3)
    state = task("x", status="in_progress", attempt=1, lease_expires_at=READ_AT - 2)
    report = check(h.records, final(state), sweep_grace=10)
    assert report.violations == []


def test_a_task_nobody_registered() -> None:
    h = History()
    h.register("x", at=0.0)
    report = check(
        h.records,
        final(
            task("x", status="failed", retries_left=0, attempt=0),
            task("ghost", status="done"),
        ),
    )
    assert found(report) == {"phantom_task": 1}
    assert report.violations[0].task_id == "ghost"


def test_a_registration_refused_yet_applied_is_an_anomaly_not_a_violation() -> None:
    h = History()
    h.register("x", at=0.0, status=503)
    h.register("y", at=0.0, status=503)
    report = check(h.records, final(task("x", status="failed", retries_left=0, attempt=0)))
    assert report.violations == []
    assert report.anomaly_counts() == {
        kind: int(kind == "refused_but_applied") for kind in ANOMALY_KINDS
    }
    assert report.anomalies[0].task_id == "x"
