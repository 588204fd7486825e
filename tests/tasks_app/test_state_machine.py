"""The database does what the lease state machine's tables say.

tasks_app.lease states the rules once, as data: the consistent states
(`STATES`), the states operators see (`CATEGORIES`) and what each operation
requires and does (`TRANSITIONS`). Here the real statements are held to those
tables: the CHECK constraint accepts exactly `STATES`; `CATEGORIES` put every
task in exactly one category; and every operation, applied on the frozen
clock to a task of every category (with and without retries left), changes
exactly the tasks its transition names, into the state the tables derive.
(tests/tasks_app/test_lease_model.py checks the rules themselves against an
independent model; this test keeps the tables and the SQL from drifting
apart.)
"""

import io
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from django.db import IntegrityError, connection, transaction

from tasks_app import lease, sweeper
from tasks_app.bulk import import_tasks
from tasks_app.lease import CATEGORIES, STATES, TRANSITIONS, TaskStatus
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
from tests.factories import make_namespace

pytestmark = pytest.mark.django_db

COLUMNS = ("status", "retries_left", "available_at", "lease_expires_at", "lease_token", "attempt")
VALID_LEASE = 1000
SHORT_LEASE = 10
# How long after the tasks were set up the operation runs: past SHORT_LEASE.
LATER = timedelta(seconds=60)
EXTEND_TO = 77


# --- The constraint ------------------------------------------------------------------


def _retries_match(state: lease.State, retries: int) -> bool:
    return state.retries == "any" or (retries > 0) == (state.retries == "some")


def _state_of(status: str, retries: int) -> lease.State:
    (state,) = [s for s in STATES if s.status == status and _retries_match(s, retries)]
    return state


def _in_states(
    status: str, retries: int, available: datetime | None, expires: datetime | None
) -> bool:
    return any(
        s.status == status
        and _retries_match(s, retries)
        and s.leased == (expires is not None)
        and {
            None: available is None,
            "queued": available is not None,
            "after_lease": available is not None and expires is not None and available >= expires,
        }[s.available]
        for s in STATES
    )


def test_the_constraint_accepts_exactly_the_tables_states(clock):
    make_namespace("ns")
    now = clock.freeze()
    other = now + timedelta(seconds=5)
    accepted = []
    combinations = itertools.product(TaskStatus.values, (0, 2), (None, now, other), (None, other))
    for n, (status, retries, available, expires) in enumerate(combinations):
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute(
                        "INSERT INTO tasks_app_task (id, namespace_id, timeout, retries_left,"
                        " status, available_at, lease_expires_at)"
                        " VALUES (%s, 'ns', 10, %s, %s, %s, %s)",
                        [f"t{n}", retries, status, available, expires],
                    )
            stored = True
        except IntegrityError as exc:
            assert "task_state_consistent" in str(exc)
            stored = False
        expected = _in_states(status, retries, available, expires)
        assert stored == expected, (status, retries, available, expires)
        accepted.append(stored)
    # Both answers were reached: the test can tell a constraint that is too
    # loose from one that is too strict.
    assert 0 < sum(accepted) < len(accepted)
    assert {t.status for t in Task.objects.all()} == set(TaskStatus.values)


# --- Tasks in every category ---------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A task of one category with (2) or without (0) retries left."""

    category: str
    retries: int

    @property
    def id(self) -> str:
        return f"{self.category}-{self.retries}"


CELLS = [
    Cell(category.name, retries)
    for category in CATEGORIES
    for retries in (0, 2)
    if category.retries == "any" or (retries > 0) == (category.retries == "some")
]


def _set_up(cell: Cell) -> None:
    """Put `cell`'s task, in its own namespace, in its category."""
    category = lease.CATEGORY[cell.category]
    make_namespace(cell.id)
    timeout = SHORT_LEASE if category.lease == "expired" else VALID_LEASE
    # A scheduled task's turn comes well after the operation runs.
    delay = 10 * int(LATER.total_seconds()) if category.turn == "later" else None
    task = NewTask(
        id=cell.id, namespace_id=cell.id, timeout=timeout, retries_left=cell.retries, delay=delay
    )
    register_tasks(tasks=[task])
    if category.status == TaskStatus.IDLE:
        return
    (row,) = capture_tasks(namespace_id=cell.id, limit=1)
    if category.status in (TaskStatus.DONE, TaskStatus.FAILED):
        release_tasks(status=category.status, leases=[Lease(row.id, row.lease_token)])


def _row(task_id: str) -> dict[str, object]:
    return dict(zip(COLUMNS, Task.objects.values_list(*COLUMNS).get(pk=task_id), strict=True))


def test_the_categories_put_every_task_in_exactly_the_one_it_was_made_for(clock):
    clock.freeze()
    for cell in CELLS:
        _set_up(cell)
    clock.advance(LATER.total_seconds())
    for category in CATEGORIES:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM tasks_app_task WHERE {category.where()}")
            by_sql = {row[0] for row in cursor.fetchall()}
        by_orm = set(Task.objects.filter(category.q).values_list("id", flat=True))
        made = {cell.id for cell in CELLS if cell.category == category.name}
        assert by_sql == by_orm == made, category.name


# --- Every operation on every category -----------------------------------------------


@dataclass(frozen=True)
class Operation:
    transition: str
    apply: Callable[[list[str]], object]
    # The status it leaves when the caller names it.
    given: str | None = None
    # The lease length a lease it starts or moves gets, when not the task's own.
    timeout: int | None = None


def _capture(ids: list[str]) -> None:
    for task_id in ids:
        capture_tasks(namespace_id=task_id, limit=1)


def _extend(ids: list[str]) -> None:
    tokens = {t.id: t.lease_token for t in Task.objects.filter(pk__in=ids)}
    for task_id in ids:
        token = tokens[task_id] or uuid.uuid4()
        extend_leases(leases=[Lease(task_id, str(token))], timeout=EXTEND_TO)


def _import(status: str) -> Callable[[list[str]], None]:
    def apply(ids: list[str]) -> None:
        lines = "".join(f"{task_id},{task_id},{status}\n" for task_id in ids)
        result = import_tasks(
            source=io.BytesIO(f"id,namespace_id,status\n{lines}".encode()),
            fmt="csv",
            on_conflict="update",
        )
        assert result.committed, result.rejections

    return apply


def _release(status: str) -> Callable[[list[str]], object]:
    return lambda ids: release_tasks(status=status, task_ids=ids)


def _action(action: OperatorAction) -> Callable[[list[str]], object]:
    return lambda ids: apply_operator_action(action=action, task_ids=ids)


OPERATIONS = [
    Operation("capture", _capture),
    *[
        Operation("release", _release(status), given=status)
        for status in ("done", "failed", "idle")
    ],
    Operation("extend", _extend, timeout=EXTEND_TO),
    Operation("expire", lambda ids: sweeper.reclaim_expired_leases()),
    Operation("requeue", _action(OperatorAction.REQUEUE)),
    Operation("cancel_lease", _action(OperatorAction.CANCEL_LEASE)),
    Operation("mark_done", _action(OperatorAction.MARK_DONE)),
    Operation("mark_failed", _action(OperatorAction.MARK_FAILED)),
    *[Operation("import_update", _import(s), given=s) for s in TaskStatus.values],
]


def test_every_transition_has_its_operation():
    assert {op.transition for op in OPERATIONS} == set(TRANSITIONS) - {"register"}


def _applies(transition: lease.Transition, cell: Cell) -> bool:
    if cell.category not in transition.sources:
        return False
    charged = transition.charges and lease.CATEGORY[cell.category].status != TaskStatus.IDLE
    return not charged or cell.retries > 0


def _expected(
    op: Operation, cell: Cell, before: dict[str, object], now: datetime, timeout: int
) -> dict[str, object]:
    """The task after `op`, as the tables derive it."""
    transition = TRANSITIONS[op.transition]
    status = transition.target or op.given
    assert status is not None
    charged = transition.charges and before["status"] != TaskStatus.IDLE
    retries = int(before["retries_left"]) - int(charged)  # type: ignore[call-overload]
    state = _state_of(status, retries)
    expires = now + timedelta(seconds=op.timeout or timeout) if state.leased else None
    queued = {
        "now": now,
        "lease_expiry": before["lease_expires_at"],
        "kept": before["available_at"] or now,
        None: None,
    }[transition.queued]
    # No namespace here has a backoff: a lease's retry is due at its expiry.
    available = {"queued": queued, "after_lease": expires, None: None}[state.available]
    if op.transition == "capture":
        token: object = "new"
    elif op.transition in ("release", "extend", "expire"):
        token = before["lease_token"]
    else:
        # Operators and imports end whatever lease there was.
        token = None
    return {
        "status": status,
        "retries_left": retries,
        "available_at": available,
        "lease_expires_at": expires,
        "lease_token": token,
        "attempt": int(before["attempt"]) + (op.transition == "capture"),  # type: ignore[call-overload]
    }


@pytest.mark.parametrize(
    "op", OPERATIONS, ids=[f"{op.transition}-{op.given or ''}".rstrip("-") for op in OPERATIONS]
)
def test_an_operation_changes_exactly_what_its_transition_says(clock, op):
    clock.freeze()
    for cell in CELLS:
        _set_up(cell)
    now = clock.advance(LATER.total_seconds())
    before = {cell.id: _row(cell.id) for cell in CELLS}
    timeouts = dict(Task.objects.values_list("id", "timeout"))
    op.apply([cell.id for cell in CELLS])
    transition = TRANSITIONS[op.transition]
    changed = set()
    for cell in CELLS:
        after = _row(cell.id)
        # An import that gives a task what it already has writes nothing.
        idempotent = op.transition == "import_update" and before[cell.id]["status"] == op.given
        if not _applies(transition, cell) or idempotent:
            assert after == before[cell.id], f"{cell.id} changed"
            continue
        changed.add(cell.id)
        expected = _expected(op, cell, before[cell.id], now, timeouts[cell.id])
        if expected["lease_token"] == "new":
            assert after["lease_token"] not in (None, before[cell.id]["lease_token"])
            expected["lease_token"] = after["lease_token"]
        assert after == expected, cell.id
        assert Task.objects.values_list("updated_at", flat=True).get(pk=cell.id) == now
    # Each operation moves some tasks and leaves others, so both branches ran.
    assert changed and changed != {cell.id for cell in CELLS}


@pytest.mark.parametrize("status", TaskStatus.values)
@pytest.mark.parametrize("retries", [0, 2])
def test_registration_derives_the_state_of_each_status(clock, status, retries):
    make_namespace("ns")
    now = clock.freeze()
    register_tasks(
        tasks=[NewTask(id="t", namespace_id="ns", timeout=30, retries_left=retries, status=status)]
    )
    state = _state_of(status, retries)
    task = Task.objects.get(pk="t")
    # Registration stamps each row a few microseconds before the clock (FIFO).
    assert now - timedelta(milliseconds=1) < task.created_at <= now
    expires = task.created_at + timedelta(seconds=30) if state.leased else None
    queued = {"queued": task.created_at, "after_lease": expires, None: None}[state.available]
    assert (task.status, task.retries_left) == (status, retries)
    assert (task.available_at, task.lease_expires_at) == (queued, expires)
    assert task.lease_token is None and task.attempt == 0
