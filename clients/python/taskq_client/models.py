"""What the API answers, as frozen dataclasses.

Each is built from the JSON as received, which it keeps in `raw`: the server
is additive, so fields this version does not know are ignored here but stay
in `raw` (for `--json` output, say). Times are aware datetimes in UTC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

ReleaseStatus = Literal["done", "failed", "idle"]


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = _Unset.UNSET
"""An argument not given (unlike None, which sends JSON null)."""

Unset = Literal[_Unset.UNSET]


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC)


def _int(value: Any, default: int = 0) -> int:
    return int(value) if value is not None else default


@dataclass(frozen=True, kw_only=True)
class Namespace:
    """A namespace. The list answers ids only: the settings are None there
    (read one with `get_namespace` for its settings)."""

    id: str
    default_timeout: int | None = None
    default_retries: int | None = None
    retry_backoff: dict[str, Any] | None = None
    history: str | None = None
    max_in_flight: int | None = None
    paused: bool | None = None
    paused_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Namespace:
        return cls(
            id=data["id"],
            default_timeout=data.get("default_timeout"),
            default_retries=data.get("default_retries"),
            retry_backoff=data.get("retry_backoff"),
            history=data.get("history"),
            max_in_flight=data.get("max_in_flight"),
            paused=data.get("paused"),
            paused_at=_time(data.get("paused_at")),
            raw=data,
        )


@dataclass(frozen=True, kw_only=True)
class NamespaceStats:
    """A namespace at a glance (`GET /v1/namespace/{id}/stats`): tasks per
    state (some may be estimates, named in `estimated`), queue lag, valid
    leases, and tasks finished over the last 5 and 60 minutes."""

    id: str
    paused: bool
    max_in_flight: int | None
    counts: dict[str, int]
    estimated: list[str]
    oldest_idle_age_seconds: float | None
    in_flight: int
    throughput: dict[str, dict[str, int]]
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NamespaceStats:
        return cls(
            id=data["id"],
            paused=bool(data.get("paused")),
            max_in_flight=data.get("max_in_flight"),
            counts=dict(data.get("counts") or {}),
            estimated=list(data.get("estimated") or []),
            oldest_idle_age_seconds=data.get("oldest_idle_age_seconds"),
            in_flight=int(data.get("in_flight") or 0),
            throughput=dict(data.get("throughput") or {}),
            raw=data,
        )


@dataclass(frozen=True, kw_only=True)
class Task:
    """A task as the server rendered it.

    `payload`, `result` and `last_error` are None when the answer did not
    carry them (lists without `fields=payload`, registration, release); `raw`
    tells a null from an absence.
    """

    id: str
    namespace_id: str
    status: str
    timeout: int
    retries_left: int
    updated_at: datetime | None
    lease_expires_at: datetime | None = None
    attempt: int = 0
    priority: int = 0
    available_at: datetime | None = None
    payload: Any = None
    result: Any = None
    last_error: Any = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def _fields_of(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": data["id"],
            "namespace_id": data.get("namespace_id", ""),
            "status": data.get("status", ""),
            "timeout": _int(data.get("timeout")),
            "retries_left": _int(data.get("retries_left")),
            "updated_at": _time(data.get("updated_at")),
            "lease_expires_at": _time(data.get("lease_expires_at")),
            "attempt": _int(data.get("attempt")),
            "priority": _int(data.get("priority")),
            "available_at": _time(data.get("available_at")),
            "payload": data.get("payload"),
            "result": data.get("result"),
            "last_error": data.get("last_error"),
            "raw": data,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        return cls(**cls._fields_of(data))


@dataclass(frozen=True, kw_only=True)
class Lease(Task):
    """A task leased to us (capture, extend), with the token that proves it.

    A lease from `extend` carries no payload (the capture's did).
    """

    lease_token: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lease:
        return cls(**cls._fields_of(data), lease_token=data["lease_token"])

    def lease_json(self) -> dict[str, str]:
        return {"id": self.id, "lease_token": self.lease_token}


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One capture of a task and how it ended (`outcome`: in_progress, done,
    failed, handed_back, expired, cancelled)."""

    attempt: int
    captured_at: datetime | None
    ended_at: datetime | None
    outcome: str
    error: Any = None
    result: Any = None
    leased_by: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        return cls(
            attempt=_int(data.get("attempt")),
            captured_at=_time(data.get("captured_at")),
            ended_at=_time(data.get("ended_at")),
            outcome=data.get("outcome") or "in_progress",
            error=data.get("error"),
            result=data.get("result"),
            leased_by=data.get("leased_by"),
            raw=data,
        )


@dataclass(frozen=True)
class LeaseError:
    """A lease that a release or extend refused, with the server's `code`:
    `stale_lease`, `not_in_progress` or `not_found`."""

    id: str
    code: str
    detail: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeaseError:
        return cls(id=data["id"], code=data.get("code", ""), detail=data.get("detail", ""))


@dataclass(frozen=True)
class ReleaseResult:
    """What a release did: the tasks released, and the leases refused.

    `resent` is True when the request had to be sent again after an answer
    was lost: then a `not_in_progress` error may be the first sending's own
    success rather than a lease lost.
    """

    released: list[Task]
    errors: list[LeaseError]
    resent: bool = False


@dataclass(frozen=True)
class ExtendResult:
    """What an extend did: the leases prolonged (new expiry), and those refused."""

    extended: list[Lease]
    errors: list[LeaseError]


def _unix(value: datetime | int) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("available_at must be an aware datetime (or unix seconds)")
        return int(value.timestamp())
    return int(value)


@dataclass(frozen=True)
class NewTask:
    """A task to register. Fields left None (or `payload` UNSET) are not sent:
    the server (or the namespace) decides. `available_at` is unix seconds or
    an aware datetime; `delay` whole seconds from now (not both)."""

    id: str
    namespace_id: str
    timeout: int | None = None
    retries_left: int | None = None
    priority: int | None = None
    payload: Any = UNSET
    delay: int | None = None
    available_at: datetime | int | None = None

    def to_json(self) -> dict[str, Any]:
        """The registration body of this task."""
        body: dict[str, Any] = {"id": self.id, "namespace_id": self.namespace_id}
        for name in ("timeout", "retries_left", "priority", "delay"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.available_at is not None:
            body["available_at"] = _unix(self.available_at)
        if self.payload is not UNSET:
            body["payload"] = self.payload
        return body
