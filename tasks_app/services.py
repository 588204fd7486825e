"""Operations on tasks: registration, capture, release, deletion.

Every operation owns its transaction and keeps it to the statements that need
it; the lease decisions are taken by the statements in `tasks_app.lease` on the
database clock.
"""

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

import orjson
from django.db import connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, QuerySet, Value
from django.db.models.functions import Now

from namespaces_app.exceptions import NamespaceNotFound
from namespaces_app.models import Namespace
from namespaces_app.services import Scope, in_scope
from taskq_project.counting import count_or_estimate
from tasks_app import lease, waiting
from tasks_app.exceptions import TaskAlreadyExists, TaskNotFound, UnknownNamespaceForTask
from tasks_app.models import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MAX_INT,
    Attempt,
    Task,
    TaskStatus,
)

RELEASE_STATUSES = (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.IDLE)
MAX_BATCH = 1000


class TaskRow(NamedTuple):
    """A task as the hot-path statements return it (cheaper than a model instance)."""

    id: str
    namespace_id: str
    timeout: int
    retries_left: int
    updated_at: datetime
    status: str
    lease_expires_at: datetime | None
    attempt: int
    priority: int
    available_at: datetime | None


class LeaseRow(NamedTuple):
    """A task under a lease, as capture and extend return it: with its token."""

    id: str
    namespace_id: str
    timeout: int
    retries_left: int
    updated_at: datetime
    status: str
    lease_expires_at: datetime | None
    attempt: int
    priority: int
    available_at: datetime | None
    lease_token: str
    # Capture answers with it; extend does not repeat it.
    payload: Any = None


@dataclass(frozen=True)
class NewTask:
    """A task to register. `timeout` and `retries_left` left as None take the
    namespace's defaults, else the product's; `available_at` (a time) or
    `delay` (seconds from now) holds an idle or failed task back."""

    id: str
    namespace_id: str
    timeout: int | None = None
    retries_left: int | None = None
    status: str = TaskStatus.IDLE
    priority: int = 0
    payload: Any = None
    available_at: datetime | None = None
    delay: float | None = None


@dataclass(frozen=True)
class Outcome:
    """What a release records for one lease: a result (done) or an error."""

    result: Any = None
    error: Any = None


class LeaseProblem(StrEnum):
    """Why release or extend refused an id (the `code` of its error)."""

    NOT_FOUND = "not_found"
    NOT_IN_PROGRESS = "not_in_progress"
    STALE_LEASE = "stale_lease"


@dataclass(frozen=True)
class ReleaseError:
    id: str
    detail: str
    code: LeaseProblem


@dataclass(frozen=True)
class ReleaseResult:
    released: list[TaskRow]
    errors: list[ReleaseError]


@dataclass(frozen=True)
class ExtendResult:
    extended: list[LeaseRow]
    errors: list[ReleaseError]


@dataclass(frozen=True)
class Lease:
    """A lease as its holder names it: the task id and the capture's token."""

    id: str
    lease_token: str


def _fetch_rows(query: str, params: dict[str, Any]) -> list[TaskRow]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return [TaskRow(*row) for row in cursor.fetchall()]


def register_tasks(*, tasks: Sequence[NewTask], scope: Scope = None) -> list[TaskRow]:
    """Register tasks all together or not at all; return them as stored.

    One transaction: the namespaces named are locked FOR KEY SHARE (so none
    can be deleted before the insert commits), then one INSERT registers every
    task. Raises UnknownNamespaceForTask for the first namespace that is not
    registered and TaskAlreadyExists for the first id that is taken; either way
    nothing is registered. Input is assumed validated (ids, bounds, statuses).
    """
    if not tasks:
        return []
    namespace_ids = list(dict.fromkeys(task.namespace_id for task in tasks))
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(lease.LOCK_NAMESPACES, {"ids": namespace_ids})
            defaults = {row[0]: row[1:] for row in cursor.fetchall()}
        for namespace_id in namespace_ids:
            # Outside the token's namespaces is the same as not registered.
            if namespace_id not in defaults or not in_scope(namespace_id, scope):
                raise UnknownNamespaceForTask(namespace_id)

        def timeout(task: NewTask) -> int:
            if task.timeout is not None:
                return task.timeout
            return defaults[task.namespace_id][0] or DEFAULT_TIMEOUT

        def retries(task: NewTask) -> int:
            if task.retries_left is not None:
                return task.retries_left
            default = defaults[task.namespace_id][1]
            return DEFAULT_RETRIES if default is None else default

        rows = _fetch_rows(
            lease.REGISTER,
            {
                "ids": [task.id for task in tasks],
                "namespace_ids": [task.namespace_id for task in tasks],
                "timeouts": [timeout(task) for task in tasks],
                "retries": [retries(task) for task in tasks],
                "statuses": [str(task.status) for task in tasks],
                "priorities": [task.priority for task in tasks],
                "payloads": [_json(task.payload) for task in tasks],
                "availables": [task.available_at for task in tasks],
                "delays": [task.delay for task in tasks],
            },
        )
        if len(rows) != len(tasks):
            inserted = {row.id for row in rows}
            taken = next(task.id for task in tasks if task.id not in inserted)
            # Leaving the block with an exception rolls the whole batch back.
            raise TaskAlreadyExists(taken)
        # Sent at commit, with the tasks.
        waiting.notify(namespace_ids)
    by_id = {row.id: row for row in rows}
    return [by_id[task.id] for task in tasks]


def register_task(*, task: NewTask, scope: Scope = None) -> TaskRow:
    """Register one task; see `register_tasks` for locking and errors."""
    return register_tasks(tasks=[task], scope=scope)[0]


def capture_tasks(
    *, namespace_id: str, limit: int, scope: Scope = None, holder: str | None = None
) -> list[LeaseRow]:
    """Lease up to `limit` capturable tasks of a namespace (one statement).

    Each comes back with the new lease's token, attempt number and payload;
    `holder` (the API token's name) is kept for the attempt history. Never
    waits on a row another transaction holds (SKIP LOCKED). Raises
    NamespaceNotFound when nothing was leased because the namespace does not
    exist; the existence check runs only then, off the common path.
    """
    if not in_scope(namespace_id, scope):
        raise NamespaceNotFound(namespace_id)
    with connection.cursor() as cursor:
        cursor.execute(lease.CAPTURE, lease.capture_params(namespace_id, limit, holder))
        rows = _lease_rows(cursor.fetchall())
    if rows:
        return rows
    controls = (
        Namespace.objects.filter(pk=namespace_id).values_list("paused_at", "max_in_flight").first()
    )
    if controls is None:
        raise NamespaceNotFound(namespace_id)
    paused_at, max_in_flight = controls
    if paused_at is not None or max_in_flight is None:
        return []
    return _capture_limited(namespace_id, limit, holder)


def pause_namespace(*, namespace_id: str, scope: Scope = None) -> Namespace:
    """Stop captures leasing in the namespace, from the next one on.

    Registrations go on, and leases already taken run to their end and may
    be released or extended. Waiting captures keep waiting. Pausing a
    paused namespace changes nothing (it stays paused since the first time).
    Raises NamespaceNotFound.
    """
    if not in_scope(namespace_id, scope):
        raise NamespaceNotFound(namespace_id)
    Namespace.objects.filter(pk=namespace_id, paused_at__isnull=True).update(paused_at=Now())
    namespace = Namespace.objects.filter(pk=namespace_id).first()
    if namespace is None:
        raise NamespaceNotFound(namespace_id)
    return namespace


def resume_namespace(*, namespace_id: str, scope: Scope = None) -> Namespace:
    """Let captures lease in the namespace again, and wake its waiting ones.
    Raises NamespaceNotFound."""
    if not in_scope(namespace_id, scope):
        raise NamespaceNotFound(namespace_id)
    if Namespace.objects.filter(pk=namespace_id, paused_at__isnull=False).update(paused_at=None):
        waiting.notify([namespace_id])
    namespace = Namespace.objects.filter(pk=namespace_id).first()
    if namespace is None:
        raise NamespaceNotFound(namespace_id)
    return namespace


# Tasks per purge statement: each a short transaction of its own.
PURGE_BATCH = 2_000


def purge_namespace(
    *,
    namespace_id: str,
    states: Sequence[str],
    older_than: float | None = None,
    scope: Scope = None,
    batch_size: int = PURGE_BATCH,
) -> dict[str, int]:
    """Delete the namespace's tasks in `states` (the API's state names:
    tasks_app.lease.PUBLIC_CATEGORY), last changed more than `older_than`
    seconds ago when given. Returns how many were deleted, per state named.

    In batches of `batch_size`, each its own transaction, so no lock is held
    for long and captures, releases and registrations go on meanwhile. A task
    being changed at that instant (SKIP LOCKED) is left; a task that enters
    a state after its turn came is not deleted. A valid lease that is purged
    frees its slot (its holder's release then finds no task). Raises
    NamespaceNotFound; an unknown state raises ValueError (the API validates
    first).
    """
    if not in_scope(namespace_id, scope):
        raise NamespaceNotFound(namespace_id)
    categories = [lease.PUBLIC_CATEGORY[state] for state in dict.fromkeys(states)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {lease.NOW} - make_interval(secs => %s::float8)"
            " FROM namespaces_app_namespace WHERE id = %s",
            [older_than, namespace_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise NamespaceNotFound(namespace_id)
    (before,) = row
    deleted: dict[str, int] = {}
    for category in categories:
        statement = lease.purge(category.name)
        params = {"namespace_id": namespace_id, "before": before, "batch": batch_size}
        count = 0
        while True:
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
                batch = cursor.rowcount
            count += batch
            if batch < batch_size:
                break
        deleted[category.public_name] = count
    if deleted.get("in_progress"):
        waiting.notify([namespace_id])
    return deleted


def purge_preview(
    *, namespace_id: str, states: Sequence[str], older_than: float | None = None
) -> dict[str, tuple[int, bool]]:
    """How many tasks `purge_namespace` with these arguments would delete now,
    per state: (count, estimated), the planner's estimate for a large one."""
    tasks = Task.objects.filter(namespace_id=namespace_id)
    if older_than is not None:
        cutoff = ExpressionWrapper(
            lease.LeaseClock() - Value(timedelta(seconds=older_than)),
            output_field=DateTimeField(),
        )
        tasks = tasks.filter(updated_at__lt=cutoff)
    return {
        state: count_or_estimate(tasks.filter(lease.PUBLIC_CATEGORY[state].q))
        for state in dict.fromkeys(states)
    }


def _capture_limited(namespace_id: str, limit: int, holder: str | None) -> list[LeaseRow]:
    """Capture in a namespace with `max_in_flight`, never past it.

    The namespace's row is locked first, so limited captures of it run one
    at a time, each counting the valid leases after the one before it
    committed; the capture then takes at most the free slots.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(lease.LOCK_FOR_CAPTURE, {"namespace_id": namespace_id})
        controls = cursor.fetchone()
        if controls is None:
            raise NamespaceNotFound(namespace_id)
        paused, max_in_flight = controls
        if paused:
            return []
        if max_in_flight is not None:
            cursor.execute(lease.IN_FLIGHT, {"namespace_id": namespace_id})
            (in_flight,) = cursor.fetchone()  # type: ignore[misc]
            limit = min(limit, max_in_flight - in_flight)
            if limit <= 0:
                return []
        cursor.execute(lease.CAPTURE_LIMITED, lease.capture_params(namespace_id, limit, holder))
        return _lease_rows(cursor.fetchall())


def _lease_rows(rows: list[tuple[Any, ...]]) -> list[LeaseRow]:
    # Django reads jsonb as text (its JSONField decodes it): so do we.
    return [
        LeaseRow._make([*row[:-1], None if row[-1] is None else orjson.loads(row[-1])])
        for row in rows
    ]


def release_tasks(
    *,
    status: str,
    task_ids: Sequence[str] | None = None,
    leases: Sequence[Lease] | None = None,
    scope: Scope = None,
    outcomes: Mapping[str, Outcome] | None = None,
    retry_after: int | None = None,
) -> ReleaseResult:
    """Finish leases with `status` (done, failed or idle), in one statement.

    Give exactly one of `task_ids` (the seed's form: whichever lease each task
    is under) or `leases` (fenced: only the lease each token names, see
    `lease._FENCE`). Every other id changes nothing and is reported with its
    code: not registered (or outside `scope`), not in progress, or a stale
    lease. Released tasks come back in the order given; a repeated id counts
    once (the first token given for it). `outcomes` gives a task's result or
    error; `retry_after` holds a failed or idle task back that many seconds
    (instead of the namespace's backoff).
    """
    if status not in RELEASE_STATUSES:
        raise ValueError(f"cannot release to {status!r}")
    ids, tokens = _fence_arguments(task_ids, leases)
    results = errors_ = None
    if outcomes:
        results = [_json(outcomes[i].result) if i in outcomes else None for i in ids]
        errors_ = [_json(outcomes[i].error) if i in outcomes else None for i in ids]
    with connection.cursor() as cursor:
        cursor.execute(
            lease.RELEASE,
            lease.release_params(
                ids,
                tokens,
                str(status),
                scope=_scope(scope),
                results=results,
                errors=errors_,
                retry_after=retry_after,
            ),
        )
        answers = cursor.fetchall()
    released, errors = _fence_outcome(ids, answers, TaskRow)
    if status != TaskStatus.DONE:
        # Failed with retries left, or handed back: capturable again, now or
        # after its wait, so a waiting capture may want it.
        waiting.notify([row.namespace_id for row in released if row.available_at is not None])
    return ReleaseResult(released=released, errors=errors)


MAX_EXTEND_SECONDS = 43_200


def extend_leases(
    *, leases: Sequence[Lease], timeout: int | None = None, scope: Scope = None
) -> ExtendResult:
    """Heartbeat: each valid lease now ends `timeout` seconds from now.

    `timeout` defaults to each task's own; the database clock decides. The
    status, retries, attempt and token stay as they are. A lease past its
    expiry that nobody captured again (and the sweeper did not reclaim) is
    still its holder's to extend. Other ids are reported as by
    `release_tasks`.
    """
    if timeout is not None and not 1 <= timeout <= MAX_EXTEND_SECONDS:
        raise ValueError(f"timeout must be 1 to {MAX_EXTEND_SECONDS} seconds")
    ids, tokens = _fence_arguments(None, leases)
    with connection.cursor() as cursor:
        cursor.execute(
            lease.EXTEND,
            lease.extend_params(ids, tokens, timeout=timeout, scope=_scope(scope)),
        )
        answers = cursor.fetchall()
    extended, errors = _fence_outcome(ids, answers, LeaseRow)
    return ExtendResult(extended=extended, errors=errors)


def _fence_arguments(
    task_ids: Sequence[str] | None, leases: Sequence[Lease] | None
) -> tuple[list[str], list[str] | None]:
    """The ids and tokens the fence takes; no tokens (NULL) for the seed's form."""
    if (task_ids is None) == (leases is None):
        raise ValueError("give exactly one of task_ids and leases")
    if leases is None:
        assert task_ids is not None
        return list(dict.fromkeys(task_ids)), None
    first: dict[str, str] = {}
    for given in leases:
        first.setdefault(given.id, given.lease_token)
    return list(first), list(first.values())


Row = TypeVar("Row", TaskRow, LeaseRow)


def _fence_outcome(
    ids: list[str], answers: list[tuple[Any, ...]], row_type: type[Row]
) -> tuple[list[Row], list[ReleaseError]]:
    """What a fenced statement did to each id, in the order the ids were given."""
    by_id = {answer[2]: answer for answer in answers}
    assert len(by_id) == len(ids), "the fence answers once per id asked for"
    changed: list[Row] = []
    errors: list[ReleaseError] = []
    for task_id in ids:
        problem, state, *columns = by_id[task_id]
        if problem is None:
            changed.append(row_type(*columns))
        else:
            errors.append(_lease_error(task_id, LeaseProblem(problem), state))
    return changed, errors


def _scope(scope: Scope) -> list[str] | None:
    return sorted(scope) if scope is not None else None


def _lease_error(task_id: str, problem: LeaseProblem, state: str | None) -> ReleaseError:
    if problem == LeaseProblem.NOT_FOUND:
        detail = "Task is not registered."
    elif problem == LeaseProblem.STALE_LEASE:
        detail = (
            f"Stale lease: the task was captured again or an operator ended the lease "
            f"(it is now {state}); nothing changed."
        )
    else:
        detail = f"Task is {state}, not in_progress; nothing changed."
    return ReleaseError(task_id, detail, problem)


def delete_task(*, task_id: str, scope: Scope = None) -> None:
    """Delete a task whatever its state. Raises TaskNotFound."""
    deleted, _ = visible_tasks(scope).filter(pk=task_id).delete()
    if not deleted:
        raise TaskNotFound(task_id)


def get_task(*, task_id: str, scope: Scope = None) -> Task | None:
    return visible_tasks(scope).filter(pk=task_id).first()


class AttemptRecord(NamedTuple):
    attempt: int
    captured_at: datetime | None
    ended_at: datetime | None
    # None while the lease is in progress.
    outcome: str | None
    error: Any
    result: Any
    leased_by: str | None


def task_attempts(*, task: Task) -> list[AttemptRecord]:
    """A task's attempts, newest first: the lease in progress (from the task
    itself) and the ended ones the history keeps."""
    attempts = []
    if task.status == TaskStatus.IN_PROGRESS and task.attempt > 0:
        attempts.append(
            AttemptRecord(task.attempt, task.leased_at, None, None, None, None, task.leased_by)
        )
    attempts += [
        AttemptRecord(
            a.attempt, a.captured_at, a.ended_at, a.outcome, a.error, a.result, a.leased_by
        )
        for a in Attempt.objects.filter(task_id=task.id).order_by("-attempt")
        if not attempts or a.attempt != task.attempt
    ]
    return attempts


def _json(value: Any) -> str | None:
    """A JSON value as the statements take it (text, cast to jsonb); None is
    SQL NULL ("none given"), so a JSON null is not stored apart from it."""
    return None if value is None else orjson.dumps(value).decode()


def visible_tasks(scope: Scope = None) -> QuerySet[Task]:
    """The tasks a token limited to `scope` can see (all for None)."""
    if scope is None:
        return Task.objects.all()
    return Task.objects.filter(namespace_id__in=scope)


# --- Operator actions --------------------------------------------------------

OPERATOR_BATCH = 1000


class OperatorAction(StrEnum):
    REQUEUE = "requeue"
    CANCEL_LEASE = "cancel_lease"
    MARK_DONE = "mark_done"
    MARK_FAILED = "mark_failed"
    DELETE = "delete"


# The actions that can make a task capturable, which wake waiting captures.
WAKING_ACTIONS = frozenset(
    {OperatorAction.REQUEUE, OperatorAction.CANCEL_LEASE, OperatorAction.MARK_FAILED}
)

_ACTION_SQL = {
    OperatorAction.REQUEUE: lease.REQUEUE,
    OperatorAction.CANCEL_LEASE: lease.CANCEL_LEASE,
    OperatorAction.MARK_DONE: lease.MARK_DONE,
    OperatorAction.MARK_FAILED: lease.MARK_FAILED,
}


@dataclass
class BulkResult:
    """What an operator action did: how many changed, and why others did not."""

    changed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, other: "BulkResult") -> None:
        self.changed += other.changed
        self.skipped.update(other.skipped)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"{self.changed} changed"
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            text += f", {self.skipped_total} skipped ({reasons})"
        return text


def _skip_reason(action: OperatorAction, status: str, validly_leased: bool) -> str:
    if validly_leased and action in (OperatorAction.MARK_DONE, OperatorAction.MARK_FAILED):
        return "under a valid lease"
    if status == TaskStatus.IN_PROGRESS and action == OperatorAction.REQUEUE:
        return "leased (cancel the lease instead)"
    if action == OperatorAction.CANCEL_LEASE:
        return f"not leased ({status})"
    return f"already {status}"


def apply_operator_action(
    *, action: OperatorAction, task_ids: Sequence[str], reset_retries_to: int | None = None
) -> BulkResult:
    """Apply an operator action to at most OPERATOR_BATCH tasks, in one statement.

    The lease rules hold as for workers: the rows are locked in id order and
    each is moved only from the states the action allows (see `tasks_app.lease`);
    the others are counted in `skipped` with the reason.
    """
    if len(task_ids) > OPERATOR_BATCH:
        raise ValueError(f"at most {OPERATOR_BATCH} tasks per call")
    if reset_retries_to is not None and not 0 <= reset_retries_to <= MAX_INT:
        raise ValueError("reset_retries_to out of range")
    ids = list(dict.fromkeys(task_ids))
    result = BulkResult()
    if not ids:
        return result
    with connection.cursor() as cursor:
        if action == OperatorAction.DELETE:
            cursor.execute("DELETE FROM tasks_app_task WHERE id = ANY(%s)", [ids])
            result.changed = cursor.rowcount
            if result.changed < len(ids):
                result.skipped["not registered"] = len(ids) - result.changed
            return result
        cursor.execute(_ACTION_SQL[action], {"ids": ids, "retries": reset_retries_to})
        rows = cursor.fetchall()
        changed = {row[0] for row in rows}
        result.changed = len(changed)
        if action in WAKING_ACTIONS:
            waiting.notify([row[1] for row in rows])
        skipped = [task_id for task_id in ids if task_id not in changed]
        if skipped:
            cursor.execute(lease.DESCRIBE_SKIPPED, {"ids": skipped})
            rows = cursor.fetchall()
            for _, status, validly_leased in rows:
                result.skipped[_skip_reason(action, status, validly_leased)] += 1
            if len(rows) < len(skipped):
                result.skipped["not registered"] += len(skipped) - len(rows)
    return result


def apply_operator_action_to_queryset(
    *,
    action: OperatorAction,
    queryset: QuerySet[Task],
    reset_retries_to: int | None = None,
    batch_size: int = OPERATOR_BATCH,
) -> BulkResult:
    """Apply an action to every task `queryset` matches, batch by batch.

    Never loads the whole selection: ids are read in keyset order (by id),
    `batch_size` at a time, and each batch is its own statement and
    transaction, so a million-task requeue holds no lock for long. The filter
    is re-evaluated for every batch.
    """
    result = BulkResult()
    for ids in _id_batches(queryset, batch_size):
        result.add(
            apply_operator_action(action=action, task_ids=ids, reset_retries_to=reset_retries_to)
        )
    return result


def _id_batches(queryset: QuerySet[Task], batch_size: int) -> Iterator[list[str]]:
    last: str | None = None
    ordered = queryset.order_by("pk")
    while True:
        page = ordered if last is None else ordered.filter(pk__gt=last)
        ids = list(page.values_list("pk", flat=True)[:batch_size])
        if not ids:
            return
        yield ids
        last = ids[-1]
