"""Worker and AsyncWorker against a fake client: outcomes, heartbeats, lost
leases and shutdown. The fake hands out leases queued by the test, and
answers release and extend as the server would."""

import asyncio
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from typing import Any

import pytest
from taskq_client import (
    UNSET,
    AsyncWorker,
    ExtendResult,
    Forbidden,
    Lease,
    LeaseError,
    NotFound,
    ReleaseResult,
    Retry,
    Task,
    TaskqError,
    Unavailable,
    Worker,
)
from taskq_client._retry import RetryPolicy

TIMEOUT = 10


def lease(task_id: str, timeout: int = 60) -> Lease:
    return Lease.from_json(
        {
            "id": task_id,
            "namespace_id": "ns",
            "status": "in_progress",
            "timeout": timeout,
            "retries_left": 3,
            "updated_at": 0,
            "attempt": 1,
            "lease_token": f"tok-{task_id}",
            "payload": {"n": task_id},
        }
    )


def quick_lease(task_id: str) -> Lease:
    """A lease beaten every 0.1 s (a third of its timeout), for tests that
    need several heartbeats."""
    return dataclasses.replace(lease(task_id, timeout=1), timeout=0.3)  # type: ignore[arg-type]


LIVE_FAKES: list["FakeClient"] = []


class FakeClient:
    """Capture, release and extend, in memory; thread-safe."""

    def __init__(self) -> None:
        self.retry_policy = RetryPolicy(backoff=0.01, max_backoff=0.05)
        self.queue: list[Lease] = []
        self.lock = threading.Lock()
        self.more = threading.Event()
        self.captures: list[tuple[int, int]] = []
        self.capture_errors: list[Exception] = []
        self.releases: list[dict[str, Any]] = []
        self.extends: list[list[str]] = []
        # Task id -> code: how release or extend refuses that lease.
        self.refuse_release: dict[str, str] = {}
        self.refuse_extend: dict[str, str] = {}
        self.on_capture: Any = None
        self.on_extend: Any = None
        # Called with each release's ids before it is answered; may raise.
        self.on_release: Any = None
        self.release_attempts = 0
        self.released = threading.Event()
        # Set by finish(): a long poll ends at once, as a server's would when
        # the worker's own signal cut it short, so tests do not sit it out.
        self.closing = False
        LIVE_FAKES.append(self)

    def add(self, *leases: Lease) -> None:
        with self.lock:
            self.queue += leases
        self.more.set()

    def capture(self, namespace_id: str, *, limit: int = 1, wait: int = 0) -> list[Lease]:
        self.captures.append((limit, wait))
        if self.on_capture is not None:
            self.on_capture()
        if self.capture_errors:
            raise self.capture_errors.pop(0)
        deadline = time.monotonic() + wait
        while True:
            with self.lock:
                if self.queue:
                    taken, self.queue = self.queue[:limit], self.queue[limit:]
                    return taken
                self.more.clear()
            left = deadline - time.monotonic()
            if left <= 0 or self.closing:
                return []
            self.more.wait(left)

    def release(
        self,
        leases: Lease | list[Lease],
        status: str,
        *,
        result: Any = UNSET,
        error: Any = UNSET,
        retry_after: float | None = None,
    ) -> ReleaseResult:
        chosen = [leases] if isinstance(leases, Lease) else list(leases)
        self.release_attempts += 1
        if self.on_release is not None:
            self.on_release([item.id for item in chosen])
        if result is not UNSET:
            json.dumps(result, allow_nan=False)
        call = {
            "ids": [item.id for item in chosen],
            "status": status,
            "result": result,
            "error": error,
            "retry_after": retry_after,
        }
        self.releases.append(call)
        released = []
        errors = []
        for item in chosen:
            code = self.refuse_release.get(item.id)
            if code:
                errors.append(LeaseError(item.id, code, "refused"))
            else:
                released.append(Task.from_json({**item.raw, "status": status}))
        self.released.set()
        return ReleaseResult(released, errors)

    def extend(self, leases: list[Lease], *, timeout: int | None = None) -> ExtendResult:
        ids = [item.id for item in leases]
        self.extends.append(ids)
        if self.on_extend is not None:
            self.on_extend(ids)
        errors = [
            LeaseError(i, self.refuse_extend[i], "refused") for i in ids if i in self.refuse_extend
        ]
        return ExtendResult([item for item in leases if item.id not in self.refuse_extend], errors)

    def releases_of(self, task_id: str) -> list[dict[str, Any]]:
        return [call for call in self.releases if task_id in call["ids"]]


def start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run)
    thread.start()
    return thread


def until(predicate: Any, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("not true in time")
        time.sleep(0.01)


def finish(worker: Worker, thread: threading.Thread) -> None:
    worker.stop()
    for fake in LIVE_FAKES:
        fake.closing = True
        fake.more.set()
    LIVE_FAKES.clear()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_outcomes_are_released_with_result_error_and_retry_after():
    fake = FakeClient()

    def handler(task: Lease) -> object:
        if task.id == "ok":
            return {"payload_was": task.payload}
        if task.id == "nothing":
            return None
        if task.id == "retry":
            raise Retry("later", after=2.5)
        raise RuntimeError("broken pipe")

    events: list[tuple[str, str | None]] = []
    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        handler,
        concurrency=4,
        wait=1,
        install_signal_handlers=False,
        on_event=lambda kind, item: events.append((kind, item.id if item else None)),
    )
    fake.add(lease("ok"), lease("nothing"), lease("retry"), lease("boom"))
    thread = start(worker)
    until(lambda: len(fake.releases) == 4)
    finish(worker, thread)
    (ok,) = fake.releases_of("ok")
    assert (ok["status"], ok["result"]) == ("done", {"payload_was": {"n": "ok"}})
    (nothing,) = fake.releases_of("nothing")
    assert (nothing["status"], nothing["result"]) == ("done", UNSET)
    (retry,) = fake.releases_of("retry")
    assert (retry["status"], retry["error"], retry["retry_after"]) == ("failed", "later", 2.5)
    (boom,) = fake.releases_of("boom")
    assert (boom["status"], boom["error"], boom["retry_after"]) == ("failed", "broken pipe", None)
    stats = worker.stats
    assert (stats.captured, stats.done, stats.failed, stats.lost) == (4, 2, 2, 0)
    assert fake.captures[0] == (4, 1)
    assert ("captured", "ok") in events
    assert ("done", "ok") in events
    assert ("failed", "boom") in events
    assert events[-2:] == [("stopping", None), ("stopped", None)]


def test_captures_ask_for_the_free_slots_up_to_the_batch():
    fake = FakeClient()
    gate = threading.Event()
    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        lambda task: gate.wait(TIMEOUT),
        concurrency=5,
        batch=2,
        wait=1,
        install_signal_handlers=False,
    )
    fake.add(lease("a"), lease("b"), lease("c"), lease("d"), lease("e"))
    thread = start(worker)
    until(lambda: worker.stats.captured == 5)
    # Two slots, two slots, then the last free one.
    assert [limit for limit, _ in fake.captures[:3]] == [2, 2, 1]
    gate.set()
    until(lambda: worker.stats.done == 5)
    finish(worker, thread)


def test_a_running_handler_keeps_its_lease_with_heartbeats():
    fake = FakeClient()
    beats = threading.Event()
    fake.on_extend = lambda ids: beats.set() if len(fake.extends) >= 3 else None

    def handler(task: Lease) -> str:
        # A timeout of 1 s: a third of it between beats; three of them pass
        # well within the lease only if the worker beats on its own.
        assert beats.wait(TIMEOUT), "no heartbeats"
        return "ok"

    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        handler,
        wait=1,
        install_signal_handlers=False,
    )
    fake.add(lease("slow", timeout=1))
    thread = start(worker)
    until(lambda: worker.stats.done == 1)
    finish(worker, thread)
    assert fake.extends[:3] == [["slow"]] * 3
    assert not any(call["status"] == "failed" for call in fake.releases)


def test_a_lease_lost_at_a_heartbeat_is_counted_and_not_released(caplog):
    fake = FakeClient()
    fake.refuse_extend["gone"] = "stale_lease"

    def handler(task: Lease) -> str:
        # Runs on until the heartbeat has found the lease lost.
        until(lambda: worker.stats.lost == 1)
        return "late"

    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        handler,
        wait=1,
        install_signal_handlers=False,
    )
    fake.add(lease("gone", timeout=1))
    with caplog.at_level(logging.WARNING, logger="taskq_client.worker"):
        thread = start(worker)
        until(lambda: worker.stats.lost == 1)
        time.sleep(0.1)
        finish(worker, thread)
    assert fake.releases == []
    assert worker.stats.done == 0
    assert "stale_lease" in caplog.text


@pytest.mark.parametrize("code", ["stale_lease", "not_in_progress"])
def test_a_release_refused_as_lost_is_a_warning_not_a_crash(caplog, code):
    fake = FakeClient()
    fake.refuse_release["t1"] = code
    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        lambda task: "ok",
        wait=1,
        install_signal_handlers=False,
    )
    fake.add(lease("t1"), lease("t2"))
    with caplog.at_level(logging.WARNING, logger="taskq_client.worker"):
        thread = start(worker)
        until(lambda: len(fake.releases) == 2)
        finish(worker, thread)
    stats = worker.stats
    assert (stats.done, stats.lost) == (1, 1)
    assert any(r.levelno == logging.WARNING and code in r.getMessage() for r in caplog.records)


def test_a_result_that_is_not_json_fails_the_task_saying_so():
    fake = FakeClient()
    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        lambda task: object(),
        wait=1,
        install_signal_handlers=False,
    )
    fake.add(lease("t1"))
    thread = start(worker)
    until(lambda: worker.stats.failed == 1)
    finish(worker, thread)
    (call,) = fake.releases
    assert call["status"] == "failed"
    assert call["error"].startswith("result is not JSON")


def test_a_long_error_is_clipped_to_what_the_server_takes():
    fake = FakeClient()

    def handler(task: Lease) -> None:
        raise ValueError("é" * 20000)

    worker = Worker(fake, "ns", handler, wait=1, install_signal_handlers=False)  # type: ignore[arg-type]
    fake.add(lease("t1"))
    thread = start(worker)
    until(lambda: worker.stats.failed == 1)
    finish(worker, thread)
    assert 0 < len(json.dumps(fake.releases[0]["error"], ensure_ascii=False).encode()) <= 8000


def test_stop_lets_running_handlers_finish_and_hands_the_overdue_back():
    fake = FakeClient()
    quick = threading.Event()
    never = threading.Event()
    started: list[str] = []

    def handler(task: Lease) -> str:
        started.append(task.id)
        (quick if task.id == "quick" else never).wait(TIMEOUT)
        return task.id

    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        handler,
        concurrency=2,
        wait=1,
        grace=0.5,
        install_signal_handlers=False,
    )
    fake.add(lease("quick"), lease("stuck"))
    thread = start(worker)
    until(lambda: len(started) == 2)
    fake.add(lease("unstarted"))
    worker.stop()
    captures = len(fake.captures)
    quick.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    never.set()
    assert fake.releases_of("quick") == [
        {"ids": ["quick"], "status": "done", "result": "quick", "error": UNSET, "retry_after": None}
    ]
    (stuck,) = fake.releases_of("stuck")
    assert stuck["status"] == "idle"
    assert fake.releases_of("unstarted") == []
    assert len(fake.captures) == captures
    stats = worker.stats
    assert (stats.done, stats.handed_back) == (1, 1)
    # The stuck handler ends after the hand-back: its outcome no longer counts.
    time.sleep(0.1)
    assert len(fake.releases) == 2


def test_leases_captured_as_the_worker_stops_are_handed_back_unstarted():
    fake = FakeClient()
    ran: list[str] = []
    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        lambda task: ran.append(task.id),
        concurrency=2,
        wait=1,
        install_signal_handlers=False,
    )
    fake.on_capture = worker.stop
    fake.add(lease("a"), lease("b"))
    worker.run()
    assert ran == []
    assert fake.releases == [
        {"ids": ["a", "b"], "status": "idle", "result": UNSET, "error": UNSET, "retry_after": None}
    ]
    assert worker.stats.handed_back == 2


def test_sigterm_cuts_a_long_poll_short_and_restores_the_handler():
    fake = FakeClient()
    polling = threading.Event()
    fake.on_capture = polling.set
    worker = Worker(fake, "ns", lambda task: None, wait=15)  # type: ignore[arg-type]
    before = signal.getsignal(signal.SIGTERM)

    def send() -> None:
        polling.wait(TIMEOUT)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send).start()
    began = time.monotonic()
    worker.run()
    # Without the cut the capture would answer after its 15 s.
    assert time.monotonic() - began < 5
    assert len(fake.captures) == 1
    assert signal.getsignal(signal.SIGTERM) is before


def test_transient_capture_errors_are_ridden_out():
    fake = FakeClient()
    fake.capture_errors = [Unavailable("down", code="connect_error")] * 3
    events: list[str] = []
    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        lambda task: "ok",
        wait=1,
        install_signal_handlers=False,
        on_event=lambda kind, item: events.append(kind),
    )
    fake.add(lease("t1"))
    thread = start(worker)
    until(lambda: worker.stats.done == 1)
    finish(worker, thread)
    assert events.count("error") == 3


def test_a_capture_error_retrying_cannot_help_ends_the_run():
    fake = FakeClient()
    fake.capture_errors = [NotFound("no namespace", status=404)]
    worker = Worker(fake, "ns", lambda task: None, install_signal_handlers=False)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        worker.run()
    with pytest.raises(RuntimeError, match="once"):
        worker.run()


def test_an_on_event_that_raises_does_not_stop_the_worker():
    fake = FakeClient()

    def explode(kind: str, item: Lease | None) -> None:
        raise RuntimeError("bad callback")

    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        lambda task: "ok",
        wait=1,
        install_signal_handlers=False,
        on_event=explode,
    )
    fake.add(lease("t1"))
    thread = start(worker)
    until(lambda: worker.stats.done == 1)
    finish(worker, thread)


class FakeAsyncClient:
    """FakeClient's calls as coroutines; captures wait on an asyncio event."""

    def __init__(self) -> None:
        self.sync = FakeClient()
        self.retry_policy = self.sync.retry_policy
        self.more = asyncio.Event()
        self.cancelled_captures = 0
        # Capture number (1 for the first) -> the error it raises.
        self.capture_fails: dict[int, Exception] = {}
        self.capture_times: list[float] = []

    def add(self, *leases: Lease) -> None:
        self.sync.queue += leases
        self.more.set()

    async def capture(self, namespace_id: str, *, limit: int = 1, wait: int = 0) -> list[Lease]:
        self.sync.captures.append((limit, wait))
        self.capture_times.append(time.monotonic())
        error = self.capture_fails.pop(len(self.sync.captures), None)
        if error is not None:
            raise error
        try:
            while not self.sync.queue:
                self.more.clear()
                await asyncio.wait_for(self.more.wait(), wait)
        except TimeoutError:
            return []
        except asyncio.CancelledError:
            self.cancelled_captures += 1
            raise
        taken, self.sync.queue = self.sync.queue[:limit], self.sync.queue[limit:]
        return taken

    async def release(self, leases: Any, status: str, **kwargs: Any) -> ReleaseResult:
        return self.sync.release(leases, status, **kwargs)

    async def extend(self, leases: list[Lease], *, timeout: int | None = None) -> ExtendResult:
        return self.sync.extend(leases, timeout=timeout)


async def until_async(predicate: Any) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("not true in time")
        await asyncio.sleep(0.01)


def test_the_async_worker_releases_beats_and_cuts_its_poll_on_stop():
    async def scenario() -> tuple[FakeAsyncClient, AsyncWorker, float]:
        fake = FakeAsyncClient()
        beats = asyncio.Event()
        fake.sync.on_extend = lambda ids: beats.set() if len(fake.sync.extends) >= 3 else None

        async def handler(task: Lease) -> object:
            if task.id == "slow":
                await asyncio.wait_for(beats.wait(), TIMEOUT)
                return "beaten"
            raise Retry("again", after=1)

        worker = AsyncWorker(
            fake,  # type: ignore[arg-type]
            "ns",
            handler,
            concurrency=2,
            wait=15,
            install_signal_handlers=False,
        )
        fake.add(lease("slow", timeout=1), lease("retry"))
        running = asyncio.create_task(worker.run())
        await until_async(lambda: worker.stats.done + worker.stats.failed == 2)
        await until_async(lambda: len(fake.sync.captures) == 2)
        await asyncio.sleep(0.05)
        began = time.monotonic()
        worker.stop()
        await asyncio.wait_for(running, TIMEOUT)
        return fake, worker, time.monotonic() - began

    fake, _, stopping = asyncio.run(scenario())
    assert stopping < 2
    assert fake.cancelled_captures == 1
    (slow,) = fake.sync.releases_of("slow")
    assert (slow["status"], slow["result"]) == ("done", "beaten")
    (retry,) = fake.sync.releases_of("retry")
    assert (retry["status"], retry["retry_after"]) == ("failed", 1)
    assert fake.sync.extends[:3] == [["slow"]] * 3


def test_the_async_worker_hands_back_what_overruns_its_grace():
    async def scenario() -> tuple[FakeAsyncClient, AsyncWorker, list[str]]:
        fake = FakeAsyncClient()
        cancelled: list[str] = []

        async def handler(task: Lease) -> str:
            try:
                await asyncio.sleep(0.1 if task.id == "quick" else 60)
            except asyncio.CancelledError:
                cancelled.append(task.id)
                raise
            return "ok"

        worker = AsyncWorker(
            fake,  # type: ignore[arg-type]
            "ns",
            handler,
            concurrency=2,
            wait=15,
            grace=0.5,
            install_signal_handlers=False,
        )
        fake.add(lease("quick"), lease("stuck"))
        running = asyncio.create_task(worker.run())
        await until_async(lambda: worker.stats.captured == 2)
        worker.stop()
        await asyncio.wait_for(running, TIMEOUT)
        return fake, worker, cancelled

    fake, worker, cancelled = asyncio.run(scenario())
    assert [c["status"] for c in fake.sync.releases_of("quick")] == ["done"]
    assert [c["status"] for c in fake.sync.releases_of("stuck")] == ["idle"]
    assert cancelled == ["stuck"]
    assert (worker.stats.done, worker.stats.handed_back) == (1, 1)


def down(ids: list[str]) -> None:
    raise Unavailable("down", status=503, code="database_unavailable")


def test_a_release_the_service_cannot_take_yet_is_resent_while_heartbeats_go_on():
    fake = FakeClient()

    def on_release(ids: list[str]) -> None:
        # Down until the lease has been extended twice after its handler ended.
        if len(fake.extends) < 2:
            down(ids)

    fake.on_release = on_release
    worker = Worker(fake, "ns", lambda task: "kept", wait=1, install_signal_handlers=False)  # type: ignore[arg-type]
    fake.add(quick_lease("t1"))
    thread = start(worker)
    until(lambda: worker.stats.done == 1, timeout=3)
    finish(worker, thread)
    assert fake.release_attempts > 1
    (call,) = fake.releases
    assert (call["status"], call["result"]) == ("done", "kept")
    assert worker.stats.lost == 0


def test_a_release_being_resent_stops_once_a_heartbeat_finds_the_lease_lost():
    fake = FakeClient()
    fake.on_release = down
    fake.refuse_extend["t1"] = "stale_lease"
    worker = Worker(fake, "ns", lambda task: "late", wait=1, install_signal_handlers=False)  # type: ignore[arg-type]
    fake.add(quick_lease("t1"))
    thread = start(worker)
    until(lambda: worker.stats.lost == 1, timeout=3)
    attempts = fake.release_attempts
    time.sleep(0.15)
    assert fake.release_attempts == attempts
    finish(worker, thread)
    assert (worker.stats.done, worker.stats.lost) == (0, 1)


def test_a_release_being_resent_is_given_up_past_the_grace():
    fake = FakeClient()
    fake.on_release = down
    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        lambda task: "ok",
        wait=1,
        grace=0.2,
        install_signal_handlers=False,
    )
    fake.add(lease("t1"))
    thread = start(worker)
    until(lambda: fake.release_attempts >= 2)
    finish(worker, thread)
    assert (worker.stats.done, worker.stats.lost) == (0, 1)


def test_the_async_worker_resends_a_release_while_heartbeats_go_on():
    async def scenario() -> tuple[FakeAsyncClient, AsyncWorker]:
        fake = FakeAsyncClient()

        def on_release(ids: list[str]) -> None:
            if len(fake.sync.extends) < 2:
                down(ids)

        fake.sync.on_release = on_release

        async def handler(task: Lease) -> str:
            return "kept"

        worker = AsyncWorker(fake, "ns", handler, wait=1, install_signal_handlers=False)  # type: ignore[arg-type]
        fake.add(quick_lease("t1"))
        running = asyncio.create_task(worker.run())
        await until_async(lambda: worker.stats.done == 1)
        worker.stop()
        await asyncio.wait_for(running, TIMEOUT)
        return fake, worker

    fake, worker = asyncio.run(scenario())
    assert fake.sync.release_attempts > 1
    (call,) = fake.sync.releases
    assert (call["status"], call["result"]) == ("done", "kept")
    assert worker.stats.lost == 0


def test_capture_errors_other_than_the_callers_fault_are_ridden_out():
    fake = FakeClient()
    fake.capture_errors = [
        TaskqError("internal error", status=500),
        TaskqError("no answer"),
        TaskqError("request timeout", status=408),
    ]
    events: list[str] = []
    worker = Worker(
        fake,  # type: ignore[arg-type]
        "ns",
        lambda task: "ok",
        wait=1,
        install_signal_handlers=False,
        on_event=lambda kind, item: events.append(kind),
    )
    fake.add(lease("t1"))
    thread = start(worker)
    until(lambda: worker.stats.done == 1)
    finish(worker, thread)
    assert events.count("error") == 3


def test_a_refused_token_at_capture_ends_the_run():
    fake = FakeClient()
    fake.capture_errors = [Forbidden("not a worker token", status=403)]
    worker = Worker(fake, "ns", lambda task: None, install_signal_handlers=False)  # type: ignore[arg-type]
    with pytest.raises(Forbidden):
        worker.run()


def test_the_backoff_does_not_overflow_after_many_failures():
    policy = RetryPolicy(backoff=0.5, max_backoff=30.0)
    assert 0 <= policy.delay(1100) <= 30.0
    assert policy.delay(5000, retry_after=100.0) == 30.0


def test_the_capture_backoff_waits_without_spinning_after_a_handler_ended():
    fake = FakeClient()
    fake.retry_policy = RetryPolicy(backoff=0.01, max_backoff=0.3)
    marks: list[tuple[float, float]] = []

    def on_capture() -> None:
        if len(fake.captures) == 2:
            # A handler has ended (and said so) before this capture fails.
            until(lambda: worker.stats.done == 1)
            time.sleep(0.02)
            fake.capture_errors.append(Unavailable("busy", status=503, retry_after=0.3))
        marks.append((time.monotonic(), time.process_time()))

    fake.on_capture = on_capture
    worker = Worker(fake, "ns", lambda task: "ok", wait=1, install_signal_handlers=False)  # type: ignore[arg-type]
    fake.add(lease("t1"))
    thread = start(worker)
    until(lambda: len(marks) == 3)
    finish(worker, thread)
    (wall_1, cpu_1), (wall_2, cpu_2) = marks[1], marks[2]
    assert wall_2 - wall_1 >= 0.25
    assert cpu_2 - cpu_1 < 0.15


def test_the_async_capture_backoff_is_not_cut_short_by_a_handler_ending():
    async def scenario() -> FakeAsyncClient:
        fake = FakeAsyncClient()
        fake.retry_policy = RetryPolicy(backoff=0.01, max_backoff=0.3)
        fake.capture_fails[2] = Unavailable("busy", status=503, retry_after=0.3)

        async def handler(task: Lease) -> str:
            await asyncio.sleep(0.05)
            return "ok"

        worker = AsyncWorker(
            fake,  # type: ignore[arg-type]
            "ns",
            handler,
            concurrency=2,
            wait=1,
            install_signal_handlers=False,
        )
        fake.add(lease("t1"))
        running = asyncio.create_task(worker.run())
        await until_async(lambda: len(fake.capture_times) == 3)
        assert worker.stats.done == 1
        worker.stop()
        await asyncio.wait_for(running, TIMEOUT)
        return fake

    fake = asyncio.run(scenario())
    assert fake.capture_times[2] - fake.capture_times[1] >= 0.25


def test_heartbeats_go_on_after_an_unexpected_error():
    fake = FakeClient()

    def on_extend(ids: list[str]) -> None:
        if len(fake.extends) == 1:
            raise RuntimeError("not a TaskqError")

    fake.on_extend = on_extend

    def handler(task: Lease) -> str:
        until(lambda: len(fake.extends) >= 3, timeout=2)
        return "ok"

    worker = Worker(fake, "ns", handler, wait=1, install_signal_handlers=False)  # type: ignore[arg-type]
    fake.add(quick_lease("t1"))
    thread = start(worker)
    until(lambda: worker.stats.done + worker.stats.failed == 1)
    finish(worker, thread)
    assert worker.stats.done == 1


def test_async_heartbeats_go_on_after_an_unexpected_error():
    async def scenario() -> AsyncWorker:
        fake = FakeAsyncClient()

        def on_extend(ids: list[str]) -> None:
            if len(fake.sync.extends) == 1:
                raise RuntimeError("not a TaskqError")

        fake.sync.on_extend = on_extend

        async def handler(task: Lease) -> str:
            deadline = time.monotonic() + 2
            while len(fake.sync.extends) < 3:
                assert time.monotonic() < deadline, "heartbeats stopped"
                await asyncio.sleep(0.01)
            return "ok"

        worker = AsyncWorker(fake, "ns", handler, wait=1, install_signal_handlers=False)  # type: ignore[arg-type]
        fake.add(quick_lease("t1"))
        running = asyncio.create_task(worker.run())
        await until_async(lambda: worker.stats.done + worker.stats.failed == 1)
        worker.stop()
        await asyncio.wait_for(running, TIMEOUT)
        return worker

    assert asyncio.run(scenario()).stats.done == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_handler_raising_system_exit_still_releases_its_lease():
    fake = FakeClient()

    def handler(task: Lease) -> None:
        raise SystemExit(3)

    worker = Worker(fake, "ns", handler, wait=1, install_signal_handlers=False)  # type: ignore[arg-type]
    fake.add(lease("t1"))
    thread = start(worker)
    until(lambda: worker.stats.failed == 1)
    finish(worker, thread)
    # The handler's thread ends by its SystemExit, raised on once released.
    for other in threading.enumerate():
        if other.name == "taskq-task-t1":
            other.join(TIMEOUT)
    (call,) = fake.releases
    assert (call["status"], call["error"]) == ("failed", "SystemExit: 3")


def test_an_async_handler_raising_cancelled_error_itself_fails_its_lease():
    async def scenario() -> tuple[FakeAsyncClient, AsyncWorker]:
        fake = FakeAsyncClient()

        async def handler(task: Lease) -> None:
            raise asyncio.CancelledError()

        worker = AsyncWorker(fake, "ns", handler, wait=1, install_signal_handlers=False)  # type: ignore[arg-type]
        fake.add(lease("t1"))
        running = asyncio.create_task(worker.run())
        await until_async(lambda: worker.stats.failed == 1)
        worker.stop()
        await asyncio.wait_for(running, TIMEOUT)
        return fake, worker

    fake, worker = asyncio.run(scenario())
    (call,) = fake.sync.releases
    assert (call["status"], call["error"]) == ("failed", "CancelledError")
    assert worker.stats.lost == 0


def test_the_async_worker_restores_the_signal_handlers_it_replaced():
    def mine(signum: int, frame: Any) -> None:
        pass

    original = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, mine)
    try:

        async def scenario() -> None:
            fake = FakeAsyncClient()

            async def handler(task: Lease) -> None:
                return None

            worker = AsyncWorker(fake, "ns", handler, wait=1)  # type: ignore[arg-type]
            running = asyncio.create_task(worker.run())
            await until_async(lambda: len(fake.sync.captures) == 1)
            assert signal.getsignal(signal.SIGTERM) is not mine
            worker.stop()
            await asyncio.wait_for(running, TIMEOUT)

        asyncio.run(scenario())
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, original)
