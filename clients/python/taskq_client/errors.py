"""Typed errors of the taskq client.

Every error the client raises for the server's answer, or for failing to get
one, is a `TaskqError`; the subclass says what happened, `detail` what the
server (or the network) said.
"""

from __future__ import annotations

from typing import Any


class TaskqError(Exception):
    """A call that did not succeed.

    `status` is the HTTP status (None when no answer came), `detail` the
    server's explanation, `code` its machine-readable code (`invalid`,
    `task_exists`, `database_unavailable`, ...; for per-lease errors
    `stale_lease`, `not_in_progress`, `not_found`), `errors` the
    field-by-field validation errors of a 400, and `body` the decoded JSON
    of the answer when there was one.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        errors: Any = None,
        body: Any = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code
        self.errors = errors
        self.body = body

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}" if self.status is not None else self.detail


class ConfigError(TaskqError):
    """The client is not configured: no URL or token given nor in the environment."""


class BadRequest(TaskqError):
    """400 (or 413, 414, 415, 431): the request itself is wrong; sending it again fails again."""


class Unauthorized(TaskqError):
    """401: no token, or one the server does not know (revoked, expired, mistyped)."""


class Forbidden(TaskqError):
    """403: the token's role does not allow this call."""


class NotFound(TaskqError):
    """404, or a per-lease `not_found`: no such namespace or task (or outside the token's)."""


class Conflict(TaskqError):
    """409 (the id is taken), or a per-lease `not_in_progress`: the lease is not held."""


class StaleLease(Conflict):
    """A per-lease `stale_lease`: the task was captured again or an operator ended the lease."""


class RateLimited(TaskqError):
    """429 after every retry: the token is over its rate. `retry_after` is in seconds."""

    def __init__(self, detail: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.retry_after = retry_after


class Unavailable(TaskqError):
    """The service could not be reached or answered 503 (or 502, 504), after every retry.

    `code` is the server's (`database_unavailable`, `server_busy`, ...) or,
    with no answer, `connect_error` (the request never left: nothing
    happened) or `no_answer` (it may have been carried out). `retry_after` is
    the server's hint in seconds, when it gave one.
    """

    def __init__(self, detail: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.retry_after = retry_after


_BY_STATUS: dict[int, type[TaskqError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    414: BadRequest,
    415: BadRequest,
    431: BadRequest,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_for_status(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    errors: Any = None,
    body: Any = None,
    retry_after: float | None = None,
) -> TaskqError:
    kind = _BY_STATUS.get(status, TaskqError)
    if kind in (RateLimited, Unavailable):
        return kind(
            detail,
            status=status,
            code=code,
            errors=errors,
            body=body,
            retry_after=retry_after,
        )
    return kind(detail, status=status, code=code, errors=errors, body=body)


def error_for_lease_code(task_id: str, code: str, detail: str) -> TaskqError:
    """The exception for a per-lease error of a release or extend."""
    text = f"{task_id}: {detail}"
    if code == "stale_lease":
        return StaleLease(text, code=code)
    if code == "not_in_progress":
        return Conflict(text, code=code)
    if code == "not_found":
        return NotFound(text, code=code)
    return TaskqError(text, code=code)
