"""The synchronous client: one method per API call, typed answers, typed errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from . import _core
from ._core import Call, Sent
from ._retry import RetryPolicy, never_sent, retry_after_seconds
from .models import (
    UNSET,
    Attempt,
    ExtendResult,
    Lease,
    Namespace,
    NamespaceStats,
    NewTask,
    ReleaseResult,
    ReleaseStatus,
    Task,
)

log = logging.getLogger("taskq_client")


class Client:
    """A taskq API client over one HTTP connection pool (thread-safe).

    `url` and `token` default to the TASKQ_URL and TASKQ_TOKEN environment
    variables (ConfigError when neither is given). `timeout` bounds every
    request (a long-polling capture waits `wait` seconds longer). Transient
    failures are retried up to `max_retries` times, for the calls where
    that is safe (see `taskq_client._retry`), waiting with exponential
    backoff from `backoff` seconds up to `max_backoff`, full jitter, and at
    least the server's `Retry-After` (up to `max_backoff`). `transport`
    replaces httpx's (tests, proxies).

    Reads of an unknown id return None; other failures raise a TaskqError.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, self._token = _core.configure(url, token)
        self.timeout = httpx.Timeout(timeout)
        self.retry_policy = RetryPolicy(max_retries, backoff, max_backoff)
        self._http = httpx.Client(
            base_url=self.url,
            headers=_core.headers(self._token),
            timeout=self.timeout,
            transport=transport,
        )
        self._sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def _send(self, call: Call) -> Sent:
        policy = self.retry_policy
        retry = 0
        maybe_done = False
        while True:
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=call.params or None,
                    content=call.content(),
                    headers=call.request_headers(),
                    timeout=_core.timeout_for(call, self.timeout),
                )
            except httpx.TransportError as exc:
                unsent = never_sent(exc)
                maybe_done = maybe_done or not unsent
                if retry >= policy.max_retries or not policy.retries_transport(exc, call.safety):
                    raise _core.transport_error(exc, sent=maybe_done) from exc
                delay = policy.delay(retry)
                reason = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if response.is_success:
                    return Sent(response, maybe_done)
                if status == 404 and call.gone_is_done and maybe_done:
                    return Sent(response, maybe_done)
                after = retry_after_seconds(response)
                if retry >= policy.max_retries or not policy.retries_status(status, call.safety):
                    raise _core.error_of(response, after)
                # A gateway's error says nothing of whether the service acted.
                maybe_done = maybe_done or status in (502, 504)
                delay = policy.delay(retry, after)
                reason = f"HTTP {status}"
            retry += 1
            log.info(
                "%s %s: %s; retry %d of %d in %.2fs",
                call.method,
                call.path,
                reason,
                retry,
                policy.max_retries,
                delay,
            )
            self._sleep(delay)

    # Namespaces

    def list_namespaces(self) -> list[Namespace]:
        """Every namespace the token sees (ids only: settings are None)."""
        body = _core.json_of(self._send(_core.list_namespaces()))
        return [Namespace.from_json(item) for item in _core.items(body)]

    def create_namespace(self, id: str, **settings: Any) -> Namespace:
        """Register a namespace, with optional settings (`default_timeout`,
        `default_retries`, `retry_backoff`, `history`). Conflict if it exists.

        Not resent after a lost answer (it would meet its own success as a
        409): that raises Unavailable with code `no_answer`.
        """
        body = _core.json_of(self._send(_core.create_namespace(id, settings)))
        return Namespace.from_json(body)

    def get_namespace(self, id: str) -> Namespace | None:
        """The namespace with its settings, or None if there is none."""
        return _core.namespace_or_none(self._send(_core.get_namespace(id)))

    def update_namespace(self, id: str, **settings: Any) -> Namespace:
        """Change the settings given (None resets a default). NotFound if unknown."""
        body = _core.json_of(self._send(_core.update_namespace(id, settings)))
        return Namespace.from_json(body)

    def namespace_stats(self, id: str) -> NamespaceStats | None:
        """Tasks per state, queue lag, valid leases and throughput; None if
        there is no such namespace."""
        return _core.stats_or_none(self._send(_core.namespace_stats(id)))

    def pause_namespace(self, id: str) -> Namespace:
        """Stop the namespace's captures leasing (waiting ones keep waiting);
        registrations and leases go on. Operator role. NotFound if unknown."""
        body = _core.json_of(self._send(_core.pause_namespace(id)))
        return Namespace.from_json(body)

    def resume_namespace(self, id: str) -> Namespace:
        """Let the namespace's captures lease again. NotFound if unknown."""
        body = _core.json_of(self._send(_core.resume_namespace(id)))
        return Namespace.from_json(body)

    def purge_namespace(
        self, id: str, states: Sequence[str], *, older_than: float | None = None
    ) -> dict[str, int]:
        """Delete the namespace's tasks in `states` ("done", "failed_final",
        ...), last changed more than `older_than` seconds ago when given;
        returns how many were deleted per state. Operator role. NotFound if
        unknown."""
        return _core.purged(self._send(_core.purge_namespace(id, states, older_than)))

    def delete_namespace(self, id: str) -> None:
        """Deregister the namespace and all its tasks. NotFound if unknown."""
        self._send(_core.delete_namespace(id))

    # Tasks

    def register_task(
        self,
        namespace_id: str,
        id: str,
        *,
        timeout: int | None = None,
        retries_left: int | None = None,
        priority: int | None = None,
        payload: Any = UNSET,
        delay: int | None = None,
        available_at: datetime | int | None = None,
    ) -> Task:
        """Register one task. Conflict if the id is taken, BadRequest if the
        namespace is unknown. Not resent after a lost answer (see
        `create_namespace`)."""
        new = NewTask(
            id,
            namespace_id,
            timeout=timeout,
            retries_left=retries_left,
            priority=priority,
            payload=payload,
            delay=delay,
            available_at=available_at,
        )
        return Task.from_json(_core.json_of(self._send(_core.register(new.to_json()))))

    def register_tasks(self, tasks: Iterable[NewTask]) -> list[Task]:
        """Register up to 1,000 tasks in one request: all of them, or none
        (the error says which item failed)."""
        bodies = [task.to_json() for task in tasks]
        if not bodies:
            return []
        return _core.tasks_of(_core.json_of(self._send(_core.register(bodies))))

    def get_task(self, id: str) -> Task | None:
        """The task with its payload, result and last error, or None if there is none."""
        return _core.task_or_none(self._send(_core.get_task(id)))

    def list_tasks(
        self,
        namespace_id: str,
        *,
        status: str | Iterable[str] | None = None,
        fields: Iterable[str] = (),
        page_size: int | None = None,
    ) -> Iterator[Task]:
        """The namespace's tasks in id order, page after page as iterated.

        `status` filters (one or several); `fields=["payload"]` adds payloads.
        """
        call: Call | None = _core.list_tasks(namespace_id, status, fields, page_size)
        while call is not None:
            body = _core.json_of(self._send(call))
            yield from _core.tasks_of(body)
            call = _core.next_page(call, body)

    def delete_task(self, id: str) -> None:
        """Delete the task whatever its state. NotFound if unknown."""
        self._send(_core.delete_task(id))

    def attempts(self, id: str) -> list[Attempt] | None:
        """The task's attempts, newest first, or None if there is no such task."""
        return _core.attempts_or_none(self._send(_core.attempts(id)))

    # Leases

    def capture(self, namespace_id: str, *, limit: int = 1, wait: int = 0) -> list[Lease]:
        """Lease up to `limit` tasks; with `wait`, wait up to that many
        seconds (0 to 20) for one. NotFound for an unknown namespace.

        Resent only when the request provably never arrived: after a lost
        answer this raises Unavailable (code `no_answer`), and any leases
        that answer held expire on their own.
        """
        call = _core.capture(namespace_id, limit, wait, self.timeout)
        return _core.leases_of(_core.json_of(self._send(call)))

    def release(
        self,
        leases: Lease | Iterable[Lease],
        status: ReleaseStatus,
        *,
        result: Any = UNSET,
        error: Any = UNSET,
        retry_after: float | None = None,
    ) -> ReleaseResult:
        """Finish leases (fenced by their tokens): `done` (with `result`),
        `failed` (with `error`, and `retry_after` seconds before the retry) or
        `idle` (handed back untouched).

        Leases the server refuses are in `.errors`, not raised. More than
        1,000 leases go in several requests.
        """
        chosen = _core.lease_list(leases)
        sents = [
            self._send(_core.release(chunk, status, result, error, retry_after))
            for chunk in _core.chunks(chosen)
        ]
        return _core.release_result(sents)

    def release_one(
        self,
        lease: Lease,
        status: ReleaseStatus,
        *,
        result: Any = UNSET,
        error: Any = UNSET,
        retry_after: float | None = None,
    ) -> Task:
        """Release one lease; the task as released. Raises StaleLease
        (`stale_lease`), Conflict (`not_in_progress`) or NotFound when refused."""
        outcome = self.release(lease, status, result=result, error=error, retry_after=retry_after)
        return _core.released_one(lease, outcome)

    def extend(
        self, leases: Lease | Iterable[Lease], *, timeout: int | None = None
    ) -> ExtendResult:
        """Heartbeat: each valid lease now ends `timeout` seconds from now
        (default: its task's timeout). Refused leases are in `.errors`."""
        chosen = _core.lease_list(leases)
        sents = [self._send(_core.extend(chunk, timeout)) for chunk in _core.chunks(chosen)]
        return _core.extend_result(sents)
