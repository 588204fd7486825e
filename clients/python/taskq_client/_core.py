"""What the sync and async clients share: configuration, the requests each
method sends, and the reading of the answers. Neither does I/O here."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from ._retry import Safety
from .errors import ConfigError, TaskqError, Unavailable, error_for_lease_code, error_for_status
from .models import (
    UNSET,
    Attempt,
    ExtendResult,
    Lease,
    LeaseError,
    Namespace,
    NamespaceStats,
    ReleaseResult,
    ReleaseStatus,
    Task,
)

__version__ = "0.1.0"
USER_AGENT = f"taskq-client/{__version__}"
# The server's bound on the leases of one release or extend.
MAX_LEASES_PER_CALL = 1000
RELEASE_STATUSES = ("done", "failed", "idle")

T = TypeVar("T")


def configure(url: str | None, token: str | None) -> tuple[str, str]:
    """The base URL and token: as given, else TASKQ_URL and TASKQ_TOKEN."""
    url = url if url is not None else os.environ.get("TASKQ_URL")
    token = token if token is not None else os.environ.get("TASKQ_TOKEN")
    if not url:
        raise ConfigError("No server URL: pass url= or set TASKQ_URL (e.g. http://localhost:8000)")
    if not token:
        raise ConfigError("No API token: pass token= or set TASKQ_TOKEN")
    url = url.rstrip("/")
    # The API lives under /v1/ of the service's root; accept either.
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url + "/", token


def headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }


def encode(body: Any) -> bytes:
    """Compact JSON, as the server reads it; NaN and infinities are refused
    here (the server would answer 400), as is anything not JSON (TypeError)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def path_id(value: str) -> str:
    # Every character but unreserved ones, `/` included: an id may hold it.
    return quote(value, safe="")


@dataclass(frozen=True)
class Call:
    """One API request and how it may be retried."""

    method: str
    path: str
    safety: Safety
    params: list[tuple[str, str | int | float | bool | None]] = field(default_factory=list)
    body: Any = UNSET
    # Seconds to wait for the answer, when longer than the client's timeout.
    read_timeout: float | None = None
    # A 404 after a resend whose first sending may have succeeded (a DELETE)
    # is that success.
    gone_is_done: bool = False

    def content(self) -> bytes | None:
        return None if self.body is UNSET else encode(self.body)

    def request_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json"} if self.body is not UNSET else {}


@dataclass(frozen=True)
class Sent:
    response: httpx.Response
    # The request went out more than once, and an earlier sending may have
    # been carried out without our seeing its answer.
    resent: bool


def timeout_for(call: Call, default: httpx.Timeout) -> httpx.Timeout:
    if call.read_timeout is None:
        return default
    return httpx.Timeout(
        connect=default.connect, read=call.read_timeout, write=default.write, pool=default.pool
    )


def body_of(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def error_of(response: httpx.Response, retry_after: float | None) -> TaskqError:
    body = body_of(response)
    detail = None
    code = None
    errors = None
    if isinstance(body, dict):
        detail = body.get("detail")
        code = body.get("code")
        errors = body.get("errors")
    if not isinstance(detail, str) or not detail:
        detail = response.text.strip()[:500] or response.reason_phrase or "error"
    return error_for_status(
        response.status_code,
        detail,
        code=code if isinstance(code, str) else None,
        errors=errors,
        body=body,
        retry_after=retry_after,
    )


def transport_error(exc: httpx.TransportError, *, sent: bool) -> Unavailable:
    """The error of a call that got no answer; `sent` when it may have arrived."""
    if sent:
        return Unavailable(
            f"No answer from the service ({type(exc).__name__}: {exc}); "
            "the request may have been carried out",
            code="no_answer",
        )
    return Unavailable(
        f"Cannot reach the service ({type(exc).__name__}: {exc})", code="connect_error"
    )


def json_of(sent: Sent) -> Any:
    body = body_of(sent.response)
    if body is None:
        raise TaskqError(
            "The service answered without a JSON body",
            status=sent.response.status_code,
        )
    return body


def items(body: Any) -> list[dict[str, Any]]:
    found = body.get("list") if isinstance(body, dict) else None
    if not isinstance(found, list):
        raise TaskqError("The service's answer has no list", body=body)
    return found


# Namespaces


def list_namespaces() -> Call:
    return Call("GET", "v1/namespace", Safety.IDEMPOTENT)


def create_namespace(namespace_id: str, settings: dict[str, Any]) -> Call:
    return Call("POST", "v1/namespace", Safety.UNSENT_ONLY, body={"id": namespace_id, **settings})


def get_namespace(namespace_id: str) -> Call:
    return Call("GET", f"v1/namespace/{path_id(namespace_id)}", Safety.IDEMPOTENT)


def update_namespace(namespace_id: str, settings: dict[str, Any]) -> Call:
    # The same settings set twice are set once: safe to send again.
    return Call("PATCH", f"v1/namespace/{path_id(namespace_id)}", Safety.IDEMPOTENT, body=settings)


def pause_namespace(namespace_id: str) -> Call:
    # Pausing twice is pausing once: safe to send again.
    return Call("POST", f"v1/namespace/{path_id(namespace_id)}/pause", Safety.IDEMPOTENT)


def resume_namespace(namespace_id: str) -> Call:
    return Call("POST", f"v1/namespace/{path_id(namespace_id)}/resume", Safety.IDEMPOTENT)


def purge_namespace(namespace_id: str, states: Sequence[str], older_than: float | None) -> Call:
    body: dict[str, Any] = {"states": list(states)}
    if older_than is not None:
        body["older_than"] = older_than
    # Sent again, it deletes what still matches: what the first one asked.
    return Call("POST", f"v1/namespace/{path_id(namespace_id)}/purge", Safety.IDEMPOTENT, body=body)


def purged(sent: Sent) -> dict[str, int]:
    """A purge's answer: tasks deleted per state."""
    return {str(state): int(n) for state, n in json_of(sent)["by_state"].items()}


def delete_namespace(namespace_id: str) -> Call:
    return Call(
        "DELETE",
        f"v1/namespace/{path_id(namespace_id)}",
        Safety.IDEMPOTENT,
        gone_is_done=True,
    )


def namespace_stats(namespace_id: str) -> Call:
    return Call("GET", f"v1/namespace/{path_id(namespace_id)}/stats", Safety.IDEMPOTENT)


def stats_or_none(sent: Sent) -> NamespaceStats | None:
    if sent.response.status_code == 204:
        return None
    return NamespaceStats.from_json(json_of(sent))


def namespace_or_none(sent: Sent) -> Namespace | None:
    if sent.response.status_code == 204:
        return None
    return Namespace.from_json(json_of(sent))


# Tasks


def register(body: Any) -> Call:
    return Call("POST", "v1/task", Safety.UNSENT_ONLY, body=body)


def get_task(task_id: str) -> Call:
    return Call("GET", f"v1/task/{path_id(task_id)}", Safety.IDEMPOTENT)


def task_or_none(sent: Sent) -> Task | None:
    if sent.response.status_code == 204:
        return None
    return Task.from_json(json_of(sent))


def delete_task(task_id: str) -> Call:
    return Call("DELETE", f"v1/task/{path_id(task_id)}", Safety.IDEMPOTENT, gone_is_done=True)


def attempts(task_id: str) -> Call:
    return Call("GET", f"v1/task/{path_id(task_id)}/attempts", Safety.IDEMPOTENT)


def attempts_or_none(sent: Sent) -> list[Attempt] | None:
    if sent.response.status_code == 204:
        return None
    return [Attempt.from_json(item) for item in items(json_of(sent))]


def list_tasks(
    namespace_id: str,
    status: str | Iterable[str] | None,
    fields: Iterable[str],
    page_size: int | None,
) -> Call:
    params: list[tuple[str, str | int | float | bool | None]] = [("namespace_id", namespace_id)]
    statuses = [status] if isinstance(status, str) else list(status or ())
    params += [("status", s) for s in statuses]
    wanted = list(fields)
    if wanted:
        params.append(("fields", ",".join(wanted)))
    if page_size is not None:
        params.append(("page_size", str(page_size)))
    return Call("GET", "v1/task", Safety.IDEMPOTENT, params=params)


def next_page(call: Call, body: Any) -> Call | None:
    """The call for the page after `body`, or None after the last.

    The server's `next` is a URL built from the host it was asked by, which
    behind a proxy need not be ours: only its query string is kept.
    """
    following = body.get("next") if isinstance(body, dict) else None
    if not following:
        return None
    query: list[tuple[str, str | int | float | bool | None]] = list(
        parse_qsl(urlsplit(following).query, keep_blank_values=True)
    )
    return Call(call.method, call.path, call.safety, params=query)


def tasks_of(body: Any) -> list[Task]:
    return [Task.from_json(item) for item in items(body)]


# Leases


def capture(namespace_id: str, limit: int, wait: float, timeout: httpx.Timeout) -> Call:
    read = timeout.read if timeout.read is not None else 30.0
    return Call(
        "POST",
        "v1/task/capture",
        Safety.UNSENT_ONLY,
        body={"namespace_id": namespace_id, "limit": limit, "wait": int(wait)},
        # The server holds a long poll `wait` seconds before it answers.
        read_timeout=wait + read if wait else None,
    )


def leases_of(body: Any) -> list[Lease]:
    return [Lease.from_json(item) for item in items(body)]


def lease_list(leases: Lease | Iterable[Lease]) -> list[Lease]:
    return [leases] if isinstance(leases, Lease) else list(leases)


def chunks(values: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(values), MAX_LEASES_PER_CALL):
        yield values[start : start + MAX_LEASES_PER_CALL]


def release(
    leases: list[Lease],
    status: ReleaseStatus,
    result: Any,
    error: Any,
    retry_after: float | None,
) -> Call:
    if status not in RELEASE_STATUSES:
        raise ValueError(f"status must be one of {', '.join(RELEASE_STATUSES)}, not {status!r}")
    body: dict[str, Any] = {"status": status, "leases": [lease.lease_json() for lease in leases]}
    if result is not UNSET:
        body["result"] = result
    if error is not UNSET:
        body["error"] = error
    if retry_after is not None:
        # Whole seconds: the server takes nothing finer, and waiting a little
        # longer than asked is the safe side.
        body["retry_after"] = int(-(-retry_after // 1))
    # Fenced by the tokens: a resend acts on none of the leases a first
    # sending finished.
    return Call("PUT", "v1/task/release", Safety.IDEMPOTENT, body=body)


def lease_errors(body: Any) -> list[LeaseError]:
    found = body.get("errors") if isinstance(body, dict) else None
    return [LeaseError.from_json(item) for item in found or []]


def release_result(sents: list[Sent]) -> ReleaseResult:
    released: list[Task] = []
    errors: list[LeaseError] = []
    for sent in sents:
        body = json_of(sent)
        released += tasks_of(body)
        errors += lease_errors(body)
    return ReleaseResult(released, errors, resent=any(s.resent for s in sents))


def released_one(lease: Lease, result: ReleaseResult) -> Task:
    for task in result.released:
        if task.id == lease.id:
            return task
    for problem in result.errors:
        if problem.id == lease.id:
            raise error_for_lease_code(problem.id, problem.code, problem.detail)
    raise TaskqError(f"{lease.id}: the service neither released it nor said why")


def extend(leases: list[Lease], timeout: int | None) -> Call:
    body: dict[str, Any] = {"leases": [lease.lease_json() for lease in leases]}
    if timeout is not None:
        body["timeout"] = int(timeout)
    return Call("PUT", "v1/task/extend", Safety.IDEMPOTENT, body=body)


def extend_result(sents: list[Sent]) -> ExtendResult:
    extended: list[Lease] = []
    errors: list[LeaseError] = []
    for sent in sents:
        body = json_of(sent)
        extended += leases_of(body)
        errors += lease_errors(body)
    return ExtendResult(extended, errors)
