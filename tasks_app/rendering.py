"""JSON shapes of tasks.

A plain function rather than a ModelSerializer: capture and release render up
to a thousand rows per call, and both model instances and `TaskRow`s come
through here with the same attributes.
"""

from datetime import datetime
from typing import Any, Protocol


class TaskLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def namespace_id(self) -> str: ...
    @property
    def timeout(self) -> int: ...
    @property
    def retries_left(self) -> int: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def status(self) -> str: ...
    @property
    def lease_expires_at(self) -> datetime | None: ...
    @property
    def attempt(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def available_at(self) -> datetime | None: ...


class LeaseLike(TaskLike, Protocol):
    @property
    def lease_token(self) -> str: ...
    @property
    def payload(self) -> Any: ...


class DetailedTask(TaskLike, Protocol):
    @property
    def payload(self) -> Any: ...
    @property
    def result(self) -> Any: ...
    @property
    def last_error(self) -> Any: ...


def _unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def render_task(task: TaskLike) -> dict[str, Any]:
    return {
        "id": task.id,
        "namespace_id": task.namespace_id,
        "timeout": task.timeout,
        "retries_left": task.retries_left,
        "updated_at": _unix(task.updated_at),
        "status": str(task.status),
        # Additive to the seed: when the current lease ends (null when none).
        "lease_expires_at": _unix(task.lease_expires_at),
        # Additive: how many times the task has been captured.
        "attempt": task.attempt,
        "priority": task.priority,
        # When the task is capturable next: its turn, or its lease's retry
        # (null when never).
        "available_at": _unix(task.available_at),
    }


def render_detail(task: DetailedTask, *, outcome: bool = True) -> dict[str, Any]:
    """A task with its payload (`GET /v1/task/{id}`, lists asked for it), and
    with the latest result and error when `outcome`."""
    rendered = render_task(task)
    rendered["payload"] = task.payload
    if outcome:
        rendered["result"] = task.result
        rendered["last_error"] = task.last_error
    return rendered


def render_lease(task: LeaseLike, *, payload: bool = False) -> dict[str, Any]:
    """A task as its lease holder sees it (capture, extend): with the token,
    and the payload when the lease is new (capture).

    Nothing else renders the token, so reading a task never lets anyone take
    its lease over.
    """
    rendered = render_task(task)
    rendered["lease_token"] = task.lease_token
    if payload:
        rendered["payload"] = task.payload
    return rendered


def render_attempt(attempt: Any) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "captured_at": _unix(attempt.captured_at),
        "ended_at": _unix(attempt.ended_at),
        "outcome": attempt.outcome or "in_progress",
        "error": attempt.error,
        "result": attempt.result,
        "leased_by": attempt.leased_by,
    }
