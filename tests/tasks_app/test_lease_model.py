"""The lease rules against a reference model, driven by hypothesis.

A state machine registers tasks, captures, releases (done, failed, idle,
with current and stale tokens), extends, moves the frozen database clock,
sweeps, and applies the operator actions, in random orders. After every step
the service's answers and every stored task must match a small model of the
README's rules, written independently of the SQL:

- capturable: idle or failed with retries left, or in progress past the
  lease's end with retries left, once its turn has come; lower priorities
  first, then oldest turn first;
- a registration may delay a task's turn; a failed or idle release may hold
  it back (`retry_after`); the namespace may have an exponential backoff,
  which a failure or an expiry waits: min(max, base * 2^(attempt-1));
- a capture of anything but an idle task costs one retry; the lease lasts
  the task's timeout; while retries are left the task is available again at
  the lease's end plus the backoff;
- release and extend need the task in progress under the token given, even
  past its end, until someone else captured it or the sweeper reclaimed it;
- the sweeper fails expired leases, available again at their end plus the
  backoff while retries are left, and charges nothing;
- operators: requeue (done, failed or scheduled to idle now), cancel a lease
  (to idle), mark done or failed (never over a valid lease), each clearing
  the token.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from namespaces_app.services import Backoff, Settings, register_namespace
from tasks_app.exceptions import TaskAlreadyExists
from tasks_app.models import Task
from tasks_app.services import (
    Lease,
    NewTask,
    OperatorAction,
    apply_operator_action,
    capture_tasks,
    extend_leases,
    register_tasks,
    release_tasks,
)
from tasks_app.sweeper import reclaim_expired_leases
from tests.clock import Clock

pytestmark = pytest.mark.django_db

IDS = [f"t{i}" for i in range(6)]


@dataclass
class Model:
    status: str
    retries_left: int
    timeout: int
    attempt: int = 0
    priority: int = 0
    token: str | None = None
    lease_end: datetime | None = None
    available_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.status == "in_progress" and self.lease_end is not None and self.lease_end <= now

    def scheduled(self, now: datetime) -> bool:
        return self.status == "idle" and self.available_at is not None and self.available_at > now


class LeaseMachine(RuleBasedStateMachine):
    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.tasks: dict[str, Model] = {}

    @initialize(backoff=st.sampled_from([None, (1.0, 4.0)]))
    def fresh_database(self, backoff: tuple[float, float] | None) -> None:
        # TRUNCATE, not DELETE: every step scans the task table, and a DELETE
        # leaves it holding each row version of the examples before (and the
        # dead rows of earlier tests' rolled-back bulk inserts) for every
        # scan to walk; a truncated table starts empty. TRUNCATE refuses to
        # run while foreign-key checks are still deferred, so run them first.
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(
                "TRUNCATE tasks_app_attempt, tasks_app_task, tasks_app_throughput,"
                " namespaces_app_namespace"
            )
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        settings = Settings()
        if backoff is not None:
            settings["retry_backoff"] = Backoff(base=backoff[0], max=backoff[1])
        register_namespace(namespace_id="ns", settings=settings)
        self.backoff = backoff
        self.now = self.clock.freeze(datetime(2026, 1, 1, tzinfo=UTC))

    def wait_after(self, attempt: int) -> timedelta:
        """The namespace's backoff after attempt `attempt` failed or expired."""
        if self.backoff is None:
            return timedelta(0)
        base, most = self.backoff
        return timedelta(seconds=min(most, base * 2 ** max(attempt - 1, 0)))

    def tick(self) -> None:
        # Every step at its own instant, so availability never ties. The
        # model knows where the frozen clock stands: moving it is one statement.
        self.now = self.clock.freeze(self.now + timedelta(microseconds=1))

    @rule(
        task_id=st.sampled_from(IDS),
        timeout=st.integers(1, 5),
        retries=st.integers(0, 2),
        priority=st.integers(0, 2),
        delay=st.sampled_from([None, 1, 4]),
    )
    def register(
        self, task_id: str, timeout: int, retries: int, priority: int, delay: int | None
    ) -> None:
        self.tick()
        new = NewTask(
            id=task_id,
            namespace_id="ns",
            timeout=timeout,
            retries_left=retries,
            priority=priority,
            delay=delay,
        )
        if task_id in self.tasks:
            with pytest.raises(TaskAlreadyExists):
                register_tasks(tasks=[new])
            return
        (row,) = register_tasks(tasks=[new])
        assert row.status == "idle"
        turn = self.now + timedelta(seconds=delay or 0)
        self.tasks[task_id] = Model("idle", retries, timeout, priority=priority, available_at=turn)

    @rule(target=leases, limit=st.integers(1, 3))
    def capture(self, limit: int):
        self.tick()
        now = self.now
        candidates: list[tuple[tuple[int, datetime], str]] = sorted(
            ((m.priority, m.available_at), task_id)
            for task_id, m in self.tasks.items()
            if m.available_at is not None and m.available_at <= now
        )
        rows = capture_tasks(namespace_id="ns", limit=limit)
        got = [row.id for row in rows]
        assert len(got) == min(limit, len(candidates))
        # Lower priority first, then oldest availability. Tasks leased
        # together become available together; among such ties any may be
        # picked, and the answer lists them by id.
        if got:
            cutoff = candidates[len(got) - 1][0]
            earlier = {task_id for key, task_id in candidates if key < cutoff}
            tied = {task_id for key, task_id in candidates if key == cutoff}
            assert earlier <= set(got) <= earlier | tied, (got, candidates)
            queued = dict((task_id, key) for key, task_id in candidates)
            assert got == sorted(got, key=lambda task_id: (queued[task_id], task_id))
        for row in rows:
            model = self.tasks[row.id]
            if model.status != "idle":
                model.retries_left -= 1
            model.status = "in_progress"
            model.attempt += 1
            assert row.attempt == model.attempt
            assert row.lease_token and row.lease_token != model.token
            model.token = row.lease_token
            model.lease_end = now + timedelta(seconds=model.timeout)
            model.available_at = (
                model.lease_end + self.wait_after(model.attempt) if model.retries_left > 0 else None
            )
        return [Lease(id=row.id, lease_token=row.lease_token) for row in rows]

    def fence(self, lease: Lease) -> str | None:
        model = self.tasks.get(lease.id)
        if model is None:
            return "not_found"
        # A token that is not the task's latest lease is stale whatever the
        # state; the latest lease's own token, once the task left progress,
        # is not in progress.
        if model.token != lease.lease_token:
            return "stale_lease"
        if model.status != "in_progress":
            return "not_in_progress"
        return None

    @rule(
        batch=leases,
        pick=st.integers(0, 2),
        status=st.sampled_from(["done", "failed", "idle"]),
        retry_after=st.sampled_from([None, None, 2]),
    )
    def release(self, batch: list[Lease], pick: int, status: str, retry_after: int | None) -> None:
        if not batch:
            return
        if status == "done":
            retry_after = None
        self.tick()
        lease = batch[pick % len(batch)]
        problem = self.fence(lease)
        result = release_tasks(status=status, leases=[lease], retry_after=retry_after)
        if problem is not None:
            assert [(e.id, e.code) for e in result.errors] == [(lease.id, problem)]
            assert result.released == []
            return
        assert [row.id for row in result.released] == [lease.id]
        assert result.errors == []
        model = self.tasks[lease.id]
        model.status = status
        model.lease_end = None
        if retry_after is not None:
            wait = timedelta(seconds=retry_after)
        else:
            wait = self.wait_after(model.attempt) if status == "failed" else timedelta(0)
        model.available_at = (
            self.now + wait
            if status == "idle" or (status == "failed" and model.retries_left > 0)
            else None
        )

    @rule(batch=leases, pick=st.integers(0, 2), timeout=st.integers(1, 5))
    def extend(self, batch: list[Lease], pick: int, timeout: int) -> None:
        if not batch:
            return
        self.tick()
        lease = batch[pick % len(batch)]
        problem = self.fence(lease)
        result = extend_leases(leases=[lease], timeout=timeout)
        if problem is not None:
            assert [(e.id, e.code) for e in result.errors] == [(lease.id, problem)]
            return
        assert [row.id for row in result.extended] == [lease.id]
        model = self.tasks[lease.id]
        assert model.lease_end is not None
        gap = (model.available_at - model.lease_end) if model.available_at else None
        model.lease_end = self.now + timedelta(seconds=timeout)
        # The retry keeps its distance from the lease's end (the backoff).
        model.available_at = model.lease_end + gap if gap is not None else None

    @rule(seconds=st.sampled_from([0.5, 1, 2, 3, 6]))
    def time_passes(self, seconds: float) -> None:
        self.now = self.clock.freeze(self.now + timedelta(seconds=seconds))

    @rule()
    def sweep(self) -> None:
        self.tick()
        expired = [task_id for task_id, m in self.tasks.items() if m.expired(self.now)]
        result = reclaim_expired_leases()
        assert result.reclaimed == len(expired)
        for task_id in expired:
            model = self.tasks[task_id]
            model.status = "failed"
            # The turn the capture set: the lease's end plus the backoff.
            model.lease_end = None

    @rule(
        action=st.sampled_from(
            [
                OperatorAction.REQUEUE,
                OperatorAction.CANCEL_LEASE,
                OperatorAction.MARK_DONE,
                OperatorAction.MARK_FAILED,
            ]
        ),
        task_id=st.sampled_from(IDS),
    )
    def operator(self, action: OperatorAction, task_id: str) -> None:
        self.tick()
        model = self.tasks.get(task_id)
        result = apply_operator_action(action=action, task_ids=[task_id])
        if model is None:
            assert result.changed == 0
            return
        status, expired = model.status, model.expired(self.now)
        allowed = {
            OperatorAction.REQUEUE: status in ("done", "failed") or model.scheduled(self.now),
            OperatorAction.CANCEL_LEASE: status == "in_progress",
            OperatorAction.MARK_DONE: status in ("idle", "failed") or expired,
            OperatorAction.MARK_FAILED: status in ("idle", "done") or expired,
        }[action]
        assert result.changed == int(allowed)
        if not allowed:
            return
        model.token = None
        model.lease_end = None
        if action in (OperatorAction.REQUEUE, OperatorAction.CANCEL_LEASE):
            model.status, model.available_at = "idle", self.now
        elif action == OperatorAction.MARK_DONE:
            model.status, model.available_at = "done", None
        else:
            model.status = "failed"
            model.available_at = self.now if model.retries_left > 0 else None

    @invariant()
    def stored_tasks_match_the_model(self) -> None:
        if not hasattr(self, "now"):
            return
        # Straight SQL: this runs after every step, and building model
        # instances was a third of the test's time.
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, status, retries_left, attempt, priority, lease_expires_at,"
                f" available_at FROM {Task._meta.db_table}"
            )
            stored = {row[0]: row[1:] for row in cursor.fetchall()}
        expected = {
            task_id: (
                m.status,
                m.retries_left,
                m.attempt,
                m.priority,
                m.lease_end,
                m.available_at,
            )
            for task_id, m in self.tasks.items()
        }
        assert stored == expected


@pytest.mark.slow
def test_the_lease_rules_match_the_model(db):
    clock = Clock()
    try:
        run_state_machine_as_test(
            LeaseMachine,
            settings=settings(
                max_examples=60,
                stateful_step_count=50,
                deadline=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        clock.thaw()
