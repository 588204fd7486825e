"""Worker runners: capture, run a handler per task, heartbeat, release.

The contract of both runners:

- Work is long-polled (`capture` with `wait`), `limit` being the free
  handler slots (at most `batch`): every lease captured starts at once.
- While a handler runs, and until its release is answered, its lease is
  extended every third of its timeout.
- A release the service cannot take yet (`Unavailable`, `RateLimited`) is
  sent again, with backoff, until it is answered, the lease is found lost,
  or the grace period after a stop has run out (then it counts as lost).
- A handler ended by a BaseException (SystemExit, KeyboardInterrupt, an
  async handler's own CancelledError) releases its lease `failed` with the
  exception's name; the exception then goes on (a CancelledError of the
  handler's own excepted).
- A capture error goes on only when retrying cannot help (400, 401, 403,
  404, a missing configuration); any other is waited out with backoff.
- A handler's return value is the `done` release's `result` (None sends
  none); an exception releases the lease `failed` with its text as `error`
  (a `Retry(after=s)` also holds the retry back `s` seconds). A result the
  server refuses (not JSON, too large) releases the lease `failed` saying so.
- A lease that turns out lost (`stale_lease`, `not_in_progress`,
  `not_found` in a heartbeat's or a release's answer: it expired and was
  captured again, or an operator ended it) is logged at WARNING and counted
  in `stats.lost`; the handler's outcome then does not count.
- `stop()`, SIGTERM or SIGINT: no more captures; running handlers get
  `grace` seconds to finish, then their leases are handed back `idle` (the
  handler is not interrupted, its outcome is dropped); leases captured
  after the stop are handed back at once. A second signal ends the grace
  period at once. A worker killed outright loses nothing: its leases expire
  on the server and go out again.

`on_event(kind, lease)` is told of `captured`, `done`, `failed`,
`handed_back` and `lost` (with the lease), and `error` (a capture that
failed), `stopping` and `stopped` (with None). It is called from the
worker's threads (or its event loop, for AsyncWorker) and must not block;
what it raises is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

from .async_client import AsyncClient
from .client import Client
from .errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    NotFound,
    RateLimited,
    TaskqError,
    Unauthorized,
    Unavailable,
)
from .models import UNSET, Lease, ReleaseResult, ReleaseStatus

log = logging.getLogger("taskq_client.worker")

EventCallback = Callable[[str, Lease | None], None]
# An error is at most 8 KiB of compact JSON on the server; kept below.
MAX_ERROR_BYTES = 8000
LOST_CODES = ("stale_lease", "not_in_progress", "not_found")
# Errors after which a capture sent again fails again.
_FATAL_CAPTURE = (ConfigError, BadRequest, Unauthorized, Forbidden, NotFound)
_FATAL_STATUSES = frozenset({400, 401, 403, 404})
# Errors after which a fenced release may well succeed when sent again.
_TRANSIENT_RELEASE = (Unavailable, RateLimited)
# How often loops that wait look at the stop flag: a signal handler may only
# set flags (taking a lock there can deadlock the thread it interrupted).
POLL_SECONDS = 0.1


class Retry(Exception):
    """Raised by a handler: release the lease `failed`, its retry held back
    `after` seconds (rounded up to whole seconds) when given."""

    def __init__(self, message: str = "", *, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


@dataclass
class WorkerStats:
    """Counts since the worker started: leases captured, finished done or
    failed, handed back idle, and lost."""

    captured: int = 0
    done: int = 0
    failed: int = 0
    handed_back: int = 0
    lost: int = 0


@dataclass
class _Outcome:
    status: ReleaseStatus
    result: Any = UNSET
    error: Any = UNSET
    retry_after: float | None = None


def _clip(text: str) -> str:
    while len(json.dumps(text, ensure_ascii=False).encode()) > MAX_ERROR_BYTES:
        text = text[: int(len(text) * 0.9)] + "…"
    return text


def _error_text(exc: BaseException) -> str:
    return _clip(str(exc) or type(exc).__name__)


def _outcome_of_base(lease: Lease, exc: BaseException) -> _Outcome:
    name = type(exc).__name__
    log.warning("task %s ended by %s", lease.id, name)
    text = str(exc)
    return _Outcome("failed", error=_clip(f"{name}: {text}" if text else name))


def _outcome_of_value(value: object) -> _Outcome:
    return _Outcome("done", result=UNSET if value is None else value)


def _outcome_of_error(lease: Lease, exc: Exception) -> _Outcome:
    if isinstance(exc, Retry):
        log.info("task %s asks for a retry: %s", lease.id, exc)
        return _Outcome("failed", error=_error_text(exc), retry_after=exc.after)
    log.warning("task %s failed: %s", lease.id, exc, exc_info=exc)
    return _Outcome("failed", error=_error_text(exc))


def _refused_result(outcome: _Outcome, exc: Exception) -> _Outcome | None:
    """The failed release to send instead of a done one the server refused."""
    if outcome.status != "done":
        return None
    if isinstance(exc, BadRequest):
        return _Outcome("failed", error=_clip(f"result refused by the service: {exc.detail}"))
    if isinstance(exc, TypeError | ValueError):
        return _Outcome("failed", error=_clip(f"result is not JSON: {exc}"))
    return None


class _Base:
    def __init__(
        self,
        namespace_id: str,
        *,
        concurrency: int,
        batch: int | None,
        wait: int,
        grace: float,
        install_signal_handlers: bool,
        on_event: EventCallback | None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.namespace_id = namespace_id
        self.concurrency = concurrency
        self.batch = max(1, min(batch if batch is not None else concurrency, 1000))
        self.wait = wait
        self.grace = grace
        self.install_signal_handlers = install_signal_handlers
        self.on_event = on_event
        self._stats = WorkerStats()
        self._stats_lock = threading.Lock()
        self._stopping = False
        self._hurry = False
        self._started = False

    @property
    def stats(self) -> WorkerStats:
        """A copy of the counters as they stand."""
        with self._stats_lock:
            return replace(self._stats)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _request_stop(self) -> None:
        # Flags only: safe from a signal handler. A second request ends the
        # grace period.
        if self._stopping:
            self._hurry = True
        self._stopping = True

    def _claim_run(self) -> None:
        if self._started:
            raise RuntimeError("a worker runs once; make another")
        self._started = True

    def _count(self, name: str, lease: Lease | None, n: int = 1) -> None:
        with self._stats_lock:
            setattr(self._stats, name, getattr(self._stats, name) + n)
        self._emit(name, lease)

    def _emit(self, kind: str, lease: Lease | None) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, lease)
        except Exception:
            log.exception("on_event(%r) raised", kind)

    def _lost(self, lease: Lease, code: str, detail: str) -> None:
        log.warning("lease of task %s lost (%s): %s", lease.id, code, detail)
        self._count("lost", lease)

    def _account(self, leases: list[Lease], status: ReleaseStatus, result: ReleaseResult) -> None:
        counter = {"done": "done", "failed": "failed", "idle": "handed_back"}[status]
        by_id = {lease.id: lease for lease in leases}
        for task in result.released:
            lease = by_id.pop(task.id, None)
            if lease is not None:
                self._count(counter, lease)
        for problem in result.errors:
            lease = by_id.pop(problem.id, None)
            if lease is None:
                continue
            if result.resent and problem.code == "not_in_progress":
                # The first sending went through unseen: the lease ended as asked.
                log.info("release of task %s was resent; taken as done by the first", lease.id)
                self._count(counter, lease)
            else:
                self._lost(lease, problem.code, problem.detail)
        for lease in by_id.values():
            self._lost(lease, "unanswered", "the service neither released it nor said why")

    def _gave_up(self, running: _Running, exc: TaskqError) -> bool:
        """Whether a release that failed for now is no longer worth resending
        (then the lease is counted lost)."""
        if running.lost:
            self._lost(running.lease, "lost", f"a heartbeat found it lost; the release: {exc}")
            return True
        if self._hurry:
            self._lost(running.lease, "release_failed", f"given up at shutdown: {exc}")
            return True
        return False

    def _capture_failed(self, exc: TaskqError) -> None:
        if isinstance(exc, _FATAL_CAPTURE) or exc.status in _FATAL_STATUSES:
            # The namespace is unknown, the token refused: retrying will not help.
            # Anything else (a 500, a 408, an answer that never came) may pass.
            raise exc
        log.warning("capture failed: %s", exc)
        self._emit("error", None)


class _Running:
    """A lease whose handler runs (or whose release is under way)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.interval = max(lease.timeout / 3, 0.05)
        self.next_beat = time.monotonic() + self.interval
        self.finishing = False
        self.lost = False
        self.abandoned = False

    @property
    def beating(self) -> bool:
        # A finishing lease is still extended: its release may take retries,
        # and the lease must not expire under it meanwhile.
        return not (self.lost or self.abandoned)


class _Interrupted(BaseException):
    """Raised by the signal handler into a capture under way, to cut its long poll."""


class Worker(_Base):
    """Runs `handler(lease)` in threads, `concurrency` at a time, for the
    tasks of `namespace_id` (see the module's docstring for the contract).

    `run()` blocks until stopped. Signal handlers (SIGTERM, SIGINT) are
    installed only when `install_signal_handlers` and `run()` is called in
    the main thread; a signal cuts a long poll short. `stop()` may be called
    from any thread, and takes effect once a long poll under way answers (at
    most `wait` seconds).
    """

    def __init__(
        self,
        client: Client,
        namespace_id: str,
        handler: Callable[[Lease], object],
        *,
        concurrency: int = 1,
        batch: int | None = None,
        wait: int = 20,
        grace: float = 30.0,
        install_signal_handlers: bool = True,
        on_event: EventCallback | None = None,
    ) -> None:
        super().__init__(
            namespace_id,
            concurrency=concurrency,
            batch=batch,
            wait=wait,
            grace=grace,
            install_signal_handlers=install_signal_handlers,
            on_event=on_event,
        )
        self.client = client
        self.handler = handler
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._changed = threading.Event()
        # Set once and never cleared, so that pauses waiting on them cannot
        # spin; `_changed` is set by every handler that ends.
        self._stop_event = threading.Event()
        self._hurry_event = threading.Event()
        self._beat_wake = threading.Event()
        self._capturing = False
        self._beats_done = False

    def stop(self) -> None:
        """Stop capturing and shut down as on SIGTERM (returns at once)."""
        self._request_stop()
        self._stop_event.set()
        if self._hurry:
            self._hurry_event.set()
        self._changed.set()

    def run(self) -> None:
        """Work until stopped; return once every lease is finished or handed back.

        Raises the capture's error when retrying cannot help (an unknown
        namespace, a refused token), after the same shutdown.
        """
        self._claim_run()
        restore = self._install_signals()
        beats = threading.Thread(target=self._heartbeats, name="taskq-heartbeat", daemon=True)
        beats.start()
        try:
            self._loop()
        finally:
            self._stopping = True
            self._emit("stopping", None)
            try:
                self._drain()
            finally:
                self._beats_done = True
                self._beat_wake.set()
                beats.join()
                restore()
                self._emit("stopped", None)

    def _install_signals(self) -> Callable[[], None]:
        if not self.install_signal_handlers or threading.current_thread() is not (
            threading.main_thread()
        ):
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, self._on_signal)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

        return restore

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._request_stop()
        if self._capturing:
            raise _Interrupted

    def _free_slots(self) -> int:
        with self._lock:
            return self.concurrency - len(self._running)

    def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            free = self._free_slots()
            if free <= 0:
                self._changed.wait(POLL_SECONDS)
                self._changed.clear()
                continue
            try:
                leases = self._capture(min(free, self.batch))
            except _Interrupted:
                return
            except TaskqError as exc:
                self._capture_failed(exc)
                hint = getattr(exc, "retry_after", None)
                pause = self.client.retry_policy.delay(failures, hint)
                self._pause(pause, self._stop_event, lambda: self._stopping)
                failures += 1
                continue
            failures = 0
            self._dispatch(leases)

    def _capture(self, limit: int) -> list[Lease]:
        self._capturing = True
        try:
            if self._stopping:
                return []
            return self.client.capture(self.namespace_id, limit=limit, wait=self.wait)
        finally:
            self._capturing = False

    def _pause(self, seconds: float, event: threading.Event, done: Callable[[], bool]) -> None:
        # Polled as well as waited on: a signal handler sets only the flags.
        until = time.monotonic() + seconds
        while not done():
            left = until - time.monotonic()
            if left <= 0:
                return
            event.wait(min(POLL_SECONDS, left))

    def _dispatch(self, leases: list[Lease]) -> None:
        late: list[Lease] = []
        for lease in leases:
            self._count("captured", lease)
            if self._stopping:
                late.append(lease)
                continue
            running = _Running(lease)
            with self._lock:
                self._running[lease.id] = running
            threading.Thread(
                target=self._run_one,
                args=(running,),
                name=f"taskq-task-{lease.id}",
                daemon=True,
            ).start()
        self._beat_wake.set()
        if late:
            self._hand_back(late)

    def _run_one(self, running: _Running) -> None:
        lease = running.lease
        escaped: BaseException | None = None
        try:
            try:
                outcome = _outcome_of_value(self.handler(lease))
            except Exception as exc:
                outcome = _outcome_of_error(lease, exc)
            except BaseException as exc:
                # SystemExit and the like end the thread, but the lease must
                # not wait out its timeout for that.
                outcome = _outcome_of_base(lease, exc)
                escaped = exc
            with self._lock:
                running.finishing = True
                skip = running.lost or running.abandoned
            if not skip:
                self._finish(running, outcome)
        finally:
            with self._lock:
                if self._running.get(lease.id) is running:
                    del self._running[lease.id]
            self._changed.set()
        if escaped is not None:
            raise escaped

    def _finish(self, running: _Running, outcome: _Outcome) -> None:
        lease = running.lease
        try:
            result = self._settle(running, outcome)
        except Exception as exc:
            instead = _refused_result(outcome, exc)
            if instead is None:
                self._lost(lease, "release_failed", str(exc))
                return
            outcome = instead
            try:
                result = self._settle(running, outcome)
            except Exception as again:
                self._lost(lease, "release_failed", str(again))
                return
        if result is not None:
            self._account([lease], outcome.status, result)

    def _settle(self, running: _Running, outcome: _Outcome) -> ReleaseResult | None:
        """The release's answer, sent again for as long as the service is
        unavailable and the lease held (the heartbeats go on meanwhile);
        None when given up."""
        failures = 0
        while True:
            try:
                return self._release(running.lease, outcome)
            except _TRANSIENT_RELEASE as exc:
                if self._gave_up(running, exc):
                    return None
                pause = self.client.retry_policy.delay(failures, exc.retry_after)
                failures += 1
                log.warning(
                    "release of task %s failed, sent again in %.2fs: %s",
                    running.lease.id,
                    pause,
                    exc,
                )
                self._pause(pause, self._hurry_event, lambda: self._hurry or running.lost)

    def _release(self, lease: Lease, outcome: _Outcome) -> ReleaseResult:
        return self.client.release(
            lease,
            outcome.status,
            result=outcome.result,
            error=outcome.error,
            retry_after=outcome.retry_after,
        )

    def _hand_back(self, leases: list[Lease]) -> None:
        try:
            result = self.client.release(leases, "idle")
        except TaskqError as exc:
            # Not lost for good: the leases expire and go out again.
            for lease in leases:
                self._lost(lease, "release_failed", str(exc))
            return
        self._account(leases, "idle", result)

    def _drain(self) -> None:
        deadline = time.monotonic() + self.grace
        while not self._hurry and time.monotonic() < deadline:
            with self._lock:
                # A handler whose lease is lost holds nothing worth waiting for.
                if all(r.lost for r in self._running.values()):
                    break
            self._changed.wait(POLL_SECONDS)
            self._changed.clear()
        # Past the grace: releases still being resent give up at their next failure.
        self._hurry = True
        self._hurry_event.set()
        with self._lock:
            overdue = [r for r in self._running.values() if not r.finishing]
            for running in overdue:
                running.abandoned = True
                del self._running[running.lease.id]
        held = [r.lease for r in overdue if not r.lost]
        if held:
            log.warning("%d handler(s) still running after the grace period", len(held))
            self._hand_back(held)
        # Releases already under way: let them answer (each sending is bounded
        # by the client's timeout and retries, and none is sent again now).
        while True:
            with self._lock:
                if not self._running:
                    return
            self._changed.wait(POLL_SECONDS)
            self._changed.clear()

    def _heartbeats(self) -> None:
        while True:
            with self._lock:
                live = [r for r in self._running.values() if r.beating]
            if self._beats_done:
                return
            now = time.monotonic()
            due = [r for r in live if r.next_beat <= now]
            if due:
                self._beat(due)
                continue
            soonest = min((r.next_beat for r in live), default=now + 1.0)
            self._beat_wake.wait(min(1.0, max(0.01, soonest - now)))
            self._beat_wake.clear()

    def _beat(self, due: list[_Running]) -> None:
        now = time.monotonic()
        try:
            result = self.client.extend([r.lease for r in due])
        except Exception as exc:
            # Whatever it was, a heartbeat thread that died would let every
            # lease expire under its handler.
            log.warning("heartbeat failed: %s", exc, exc_info=not isinstance(exc, TaskqError))
            for running in due:
                # Soon again, while the lease still runs.
                running.next_beat = now + min(running.interval / 2, 1.0)
            return
        for running in due:
            running.next_beat = now + running.interval
        by_id = {r.lease.id: r for r in due}
        for problem in result.errors:
            found = by_id.get(problem.id)
            if found is None:
                continue
            with self._lock:
                if found.lost or found.abandoned:
                    continue
                found.lost = True
                # A release under way counts the lease itself, once answered
                # or given up (its answer may yet be a success).
                counted = not found.finishing
            if counted:
                self._lost(found.lease, problem.code, problem.detail)


class AsyncWorker(_Base):
    """`Worker`'s twin for asyncio: `await handler(lease)` runs as a task of
    the running event loop, `concurrency` at a time, with an AsyncClient.

    `stop()` cuts a long poll under way short (the capture is cancelled); it
    must be called from the worker's event loop (use
    `loop.call_soon_threadsafe` from elsewhere). Signal handlers go on the
    loop when `install_signal_handlers` and it runs in the main thread.
    """

    def __init__(
        self,
        client: AsyncClient,
        namespace_id: str,
        handler: Callable[[Lease], Awaitable[object]],
        *,
        concurrency: int = 1,
        batch: int | None = None,
        wait: int = 20,
        grace: float = 30.0,
        install_signal_handlers: bool = True,
        on_event: EventCallback | None = None,
    ) -> None:
        super().__init__(
            namespace_id,
            concurrency=concurrency,
            batch=batch,
            wait=wait,
            grace=grace,
            install_signal_handlers=install_signal_handlers,
            on_event=on_event,
        )
        self.client = client
        self.handler = handler
        self._running: dict[str, tuple[_Running, asyncio.Task[None]]] = {}
        self._changed: asyncio.Event | None = None
        # Set once, never cleared: a pause on them is not cut short by every
        # handler that ends, as one on `_changed` is.
        self._stop_event: asyncio.Event | None = None
        self._hurry_event: asyncio.Event | None = None
        self._hand_backs: list[asyncio.Task[None]] = []

    def stop(self) -> None:
        """Stop capturing and shut down as on SIGTERM."""
        self._request_stop()
        if self._stop_event is not None:
            self._stop_event.set()
        if self._hurry and self._hurry_event is not None:
            self._hurry_event.set()
        if self._changed is not None:
            self._changed.set()

    async def run(self) -> None:
        """Work until stopped; return once every lease is finished or handed back."""
        self._claim_run()
        self._changed = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._hurry_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = self._install_signals(loop)
        beats = asyncio.create_task(self._heartbeats())
        try:
            await self._loop()
        finally:
            self._stopping = True
            self._emit("stopping", None)
            try:
                await self._drain()
            finally:
                beats.cancel()
                await asyncio.wait([beats])
                for sig, previous in signals.items():
                    loop.remove_signal_handler(sig)
                    # The loop puts back the default handler, not the one it replaced.
                    signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
                self._emit("stopped", None)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> dict[int, Any]:
        """The signals handled, each with the handler it had before."""
        if not self.install_signal_handlers:
            return {}
        if threading.current_thread() is not threading.main_thread():
            return {}
        installed: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):
                continue
            installed[sig] = previous
        return installed

    async def _wait_changed(self, timeout: float) -> None:
        assert self._changed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()

    async def _pause(self, seconds: float, event: asyncio.Event, done: Callable[[], bool]) -> None:
        # Polled as well: `done` may turn true with no event set (a lease
        # found lost by a heartbeat).
        until = time.monotonic() + seconds
        while not done():
            left = until - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(POLL_SECONDS, left))

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            free = self.concurrency - len(self._running)
            if free <= 0:
                await self._wait_changed(1.0)
                continue
            try:
                leases = await self._capture(min(free, self.batch))
            except TaskqError as exc:
                self._capture_failed(exc)
                pause = self.client.retry_policy.delay(failures, getattr(exc, "retry_after", None))
                failures += 1
                assert self._stop_event is not None
                await self._pause(pause, self._stop_event, lambda: self._stopping)
                continue
            failures = 0
            self._dispatch(leases)

    async def _capture(self, limit: int) -> list[Lease]:
        assert self._changed is not None
        self._changed.clear()
        capture = asyncio.create_task(
            self.client.capture(self.namespace_id, limit=limit, wait=self.wait)
        )
        stopped = asyncio.create_task(self._changed.wait())
        try:
            while not capture.done():
                await asyncio.wait({capture, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if self._stopping and not capture.done():
                    capture.cancel()
                    await asyncio.wait([capture])
                elif stopped.done():
                    # A handler finished: not a reason to cut the poll.
                    self._changed.clear()
                    stopped = asyncio.create_task(self._changed.wait())
        finally:
            stopped.cancel()
            if not capture.done():
                capture.cancel()
                await asyncio.wait([capture])
        if capture.cancelled():
            return []
        return capture.result()

    def _dispatch(self, leases: list[Lease]) -> None:
        late: list[Lease] = []
        for lease in leases:
            self._count("captured", lease)
            if self._stopping:
                late.append(lease)
                continue
            running = _Running(lease)
            task = asyncio.create_task(self._run_one(running), name=f"taskq-task-{lease.id}")
            self._running[lease.id] = (running, task)
        if late:
            # Kept as a task of its own so the loop goes on; drained at the end.
            self._hand_backs.append(asyncio.create_task(self._hand_back(late)))

    async def _run_one(self, running: _Running) -> None:
        lease = running.lease
        escaped: BaseException | None = None
        try:
            try:
                pending: object = self.handler(lease)
                value = await pending if inspect.isawaitable(pending) else pending
                outcome = _outcome_of_value(value)
            except Exception as exc:
                outcome = _outcome_of_error(lease, exc)
            except asyncio.CancelledError as exc:
                if running.abandoned:
                    raise  # cut by the drain, which hands the lease back
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Cancelled from outside (the loop shutting down): the
                    # lease goes back untouched, and the cancellation on.
                    running.finishing = True
                    if not running.lost:
                        await self._hand_back([lease])
                    raise
                # The handler's own (an await inside it was cancelled): its failure.
                outcome = _outcome_of_base(lease, exc)
            except BaseException as exc:
                # KeyboardInterrupt, SystemExit: the loop ends, but the lease
                # need not wait out its timeout for that.
                outcome = _outcome_of_base(lease, exc)
                escaped = exc
            running.finishing = True
            if not (running.lost or running.abandoned):
                await self._finish(running, outcome)
        finally:
            entry = self._running.get(lease.id)
            if entry is not None and entry[0] is running:
                del self._running[lease.id]
            if self._changed is not None:
                self._changed.set()
        if escaped is not None:
            raise escaped

    async def _finish(self, running: _Running, outcome: _Outcome) -> None:
        lease = running.lease
        try:
            result = await self._settle(running, outcome)
        except Exception as exc:
            instead = _refused_result(outcome, exc)
            if instead is None:
                self._lost(lease, "release_failed", str(exc))
                return
            outcome = instead
            try:
                result = await self._settle(running, outcome)
            except Exception as again:
                self._lost(lease, "release_failed", str(again))
                return
        if result is not None:
            self._account([lease], outcome.status, result)

    async def _settle(self, running: _Running, outcome: _Outcome) -> ReleaseResult | None:
        """As `Worker._settle`."""
        assert self._hurry_event is not None
        failures = 0
        while True:
            try:
                return await self._release(running.lease, outcome)
            except _TRANSIENT_RELEASE as exc:
                if self._gave_up(running, exc):
                    return None
                pause = self.client.retry_policy.delay(failures, exc.retry_after)
                failures += 1
                log.warning(
                    "release of task %s failed, sent again in %.2fs: %s",
                    running.lease.id,
                    pause,
                    exc,
                )
                await self._pause(pause, self._hurry_event, lambda: self._hurry or running.lost)

    async def _release(self, lease: Lease, outcome: _Outcome) -> ReleaseResult:
        return await self.client.release(
            lease,
            outcome.status,
            result=outcome.result,
            error=outcome.error,
            retry_after=outcome.retry_after,
        )

    async def _hand_back(self, leases: list[Lease]) -> None:
        try:
            result = await self.client.release(leases, "idle")
        except TaskqError as exc:
            for lease in leases:
                self._lost(lease, "release_failed", str(exc))
            return
        self._account(leases, "idle", result)

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.grace
        while not self._hurry and not all(r.lost for r, _ in self._running.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await self._wait_changed(min(left, 1.0))
        # Past the grace: releases still being resent give up at their next failure.
        self._hurry = True
        if self._hurry_event is not None:
            self._hurry_event.set()
        overdue = [
            (running, task) for running, task in self._running.values() if not running.finishing
        ]
        for running, task in overdue:
            running.abandoned = True
            del self._running[running.lease.id]
            task.cancel()
        if overdue:
            await asyncio.wait([task for _, task in overdue])
        held = [running.lease for running, _ in overdue if not running.lost]
        if held:
            log.warning("%d handler(s) still running after the grace period", len(held))
            await self._hand_back(held)
        rest = [task for _, task in self._running.values()] + self._hand_backs
        if rest:
            await asyncio.wait(rest)

    async def _heartbeats(self) -> None:
        while True:
            live = [running for running, _ in self._running.values() if running.beating]
            now = time.monotonic()
            due = [r for r in live if r.next_beat <= now]
            if due:
                await self._beat(due)
                continue
            soonest = min((r.next_beat for r in live), default=now + POLL_SECONDS * 2)
            await asyncio.sleep(min(POLL_SECONDS * 2, max(0.01, soonest - now)))

    async def _beat(self, due: list[_Running]) -> None:
        now = time.monotonic()
        try:
            result = await self.client.extend([r.lease for r in due])
        except Exception as exc:
            # As in Worker: the heartbeats must outlive any one failure.
            log.warning("heartbeat failed: %s", exc, exc_info=not isinstance(exc, TaskqError))
            for running in due:
                running.next_beat = now + min(running.interval / 2, 1.0)
            return
        for running in due:
            running.next_beat = now + running.interval
        by_id = {r.lease.id: r for r in due}
        for problem in result.errors:
            found = by_id.get(problem.id)
            if found is None or found.lost or found.abandoned:
                continue
            found.lost = True
            # A release under way counts the lease itself (see Worker._beat).
            if not found.finishing:
                self._lost(found.lease, problem.code, problem.detail)
