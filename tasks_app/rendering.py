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
    }
