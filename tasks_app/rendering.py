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


class LeaseLike(TaskLike, Protocol):
    @property
    def lease_token(self) -> str: ...


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
    }


def render_lease(task: LeaseLike) -> dict[str, Any]:
    """A task as its lease holder sees it (capture, extend): with the token.

    Nothing else renders the token, so reading a task never lets anyone take
    its lease over.
    """
    rendered = render_task(task)
    rendered["lease_token"] = task.lease_token
    return rendered
