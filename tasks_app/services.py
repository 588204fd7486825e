"""Operations on tasks: registration, capture, release, deletion.

Every operation owns its transaction and keeps it to the statements that need
it; the lease decisions are taken by the statements in `tasks_app.sql` on the
database clock.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from django.db import connection, transaction

from namespaces_app.exceptions import NamespaceNotFound
from namespaces_app.models import Namespace
from tasks_app import sql
from tasks_app.exceptions import TaskAlreadyExists, TaskNotFound, UnknownNamespaceForTask
from tasks_app.models import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Task, TaskStatus

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


@dataclass(frozen=True)
class NewTask:
    id: str
    namespace_id: str
    timeout: int = DEFAULT_TIMEOUT
    retries_left: int = DEFAULT_RETRIES
    status: str = TaskStatus.IDLE


@dataclass(frozen=True)
class ReleaseError:
    id: str
    detail: str


@dataclass(frozen=True)
class ReleaseResult:
    released: list[TaskRow]
    errors: list[ReleaseError]


def _fetch_rows(query: str, params: dict[str, Any]) -> list[TaskRow]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return [TaskRow(*row) for row in cursor.fetchall()]


def register_tasks(*, tasks: Sequence[NewTask]) -> list[TaskRow]:
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
            cursor.execute(sql.LOCK_NAMESPACES, {"ids": namespace_ids})
            known = {row[0] for row in cursor.fetchall()}
        for namespace_id in namespace_ids:
            if namespace_id not in known:
                raise UnknownNamespaceForTask(namespace_id)
        rows = _fetch_rows(
            sql.REGISTER,
            {
                "ids": [task.id for task in tasks],
                "namespace_ids": [task.namespace_id for task in tasks],
                "timeouts": [task.timeout for task in tasks],
                "retries": [task.retries_left for task in tasks],
                "statuses": [str(task.status) for task in tasks],
            },
        )
        if len(rows) != len(tasks):
            inserted = {row.id for row in rows}
            taken = next(task.id for task in tasks if task.id not in inserted)
            # Leaving the block with an exception rolls the whole batch back.
            raise TaskAlreadyExists(taken)
    by_id = {row.id: row for row in rows}
    return [by_id[task.id] for task in tasks]


def register_task(*, task: NewTask) -> TaskRow:
    """Register one task; see `register_tasks` for locking and errors."""
    return register_tasks(tasks=[task])[0]


def capture_tasks(*, namespace_id: str, limit: int) -> list[TaskRow]:
    """Lease up to `limit` capturable tasks of a namespace (one statement).

    Never waits on a row another transaction holds (SKIP LOCKED). Raises
    NamespaceNotFound when nothing was leased because the namespace does not
    exist; the existence check runs only then, off the common path.
    """
    rows = _fetch_rows(sql.CAPTURE, {"namespace_id": namespace_id, "limit": limit})
    if not rows and not Namespace.objects.filter(pk=namespace_id).exists():
        raise NamespaceNotFound(namespace_id)
    return rows


def release_tasks(*, task_ids: Sequence[str], status: str) -> ReleaseResult:
    """Finish the leases of `task_ids` with `status` (done, failed or idle).

    One statement releases every id that is in progress; the others are
    reported per id (not registered, or not in progress) and change nothing.
    Released tasks come back in the order their ids were given.
    """
    if status not in RELEASE_STATUSES:
        raise ValueError(f"cannot release to {status!r}")
    unique_ids = list(dict.fromkeys(task_ids))
    rows = _fetch_rows(sql.RELEASE, {"ids": unique_ids, "status": str(status)})
    by_id = {row.id: row for row in rows}
    errors: list[ReleaseError] = []
    missed = [task_id for task_id in unique_ids if task_id not in by_id]
    if missed:
        current = dict(Task.objects.filter(pk__in=missed).values_list("pk", "status"))
        for task_id in missed:
            if task_id not in current:
                errors.append(ReleaseError(task_id, "Task is not registered."))
            else:
                errors.append(
                    ReleaseError(
                        task_id, f"Task is {current[task_id]}, not in_progress; nothing changed."
                    )
                )
    return ReleaseResult(
        released=[by_id[task_id] for task_id in unique_ids if task_id in by_id], errors=errors
    )


def delete_task(*, task_id: str) -> None:
    """Delete a task whatever its state. Raises TaskNotFound."""
    deleted, _ = Task.objects.filter(pk=task_id).delete()
    if not deleted:
        raise TaskNotFound(task_id)


def get_task(*, task_id: str) -> Task | None:
    return Task.objects.filter(pk=task_id).first()
