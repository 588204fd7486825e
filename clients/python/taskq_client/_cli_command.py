"""`taskq work`'s handler: one run of a command per task, in any language.

The task goes to the command as JSON on standard input and, for scripts
that need no JSON parser for the basics, in environment variables. Its exit
status decides the release:

- 0: done. Standard output that is JSON (up to 64 KiB) is the result;
  other output is kept as text, its last 4 KiB as a JSON string; no
  output, no result.
- `tempfail` (75, EX_TEMPFAIL from sysexits.h): failed with a wait
  (`retry_after`), the end of standard error as the error. Like any
  failure it costs a retry, so a command that always answers 75 still
  runs out of them.
- anything else, or killed by a signal: failed, with the last 4 KiB of
  standard error (or the exit status, when it wrote nothing) as the error.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn, Protocol

from .worker import Retry

# The server's own limits, as compact UTF-8 JSON.
RESULT_MAX_BYTES = 64 * 1024
ERROR_MAX_BYTES = 8 * 1024
TAIL_BYTES = 4 * 1024
# Linux refuses to start a program with any one environment string over
# 128 KiB (MAX_ARG_STRLEN); a payload larger than this is on stdin only.
ENV_PAYLOAD_MAX_BYTES = 64 * 1024
EX_TEMPFAIL = 75
# A child whose group still holds its pipes after it exited (a daemonised
# grandchild) must not hold the task: its output is taken as it stands.
PIPE_GRACE_SECONDS = 1.0
# After SIGKILL, how long a process group may take to be gone.
KILL_WAIT_SECONDS = 2.0


class LeaseLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def namespace_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def raw(self) -> Mapping[str, Any]: ...


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def task_environment(lease: LeaseLike, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env["TASKQ_TASK_ID"] = lease.id
    env["TASKQ_NAMESPACE"] = lease.namespace_id
    env["TASKQ_ATTEMPT"] = str(lease.attempt)
    payload = _compact(lease.raw.get("payload"))
    if len(payload.encode()) <= ENV_PAYLOAD_MAX_BYTES:
        env["TASKQ_PAYLOAD"] = payload
    else:
        # Not a stale value from the parent's environment either.
        env.pop("TASKQ_PAYLOAD", None)
    return env


def task_stdin(lease: LeaseLike) -> bytes:
    return (_compact(dict(lease.raw)) + "\n").encode()


def text_tail(data: bytes, size: int = TAIL_BYTES) -> str:
    """The last `size` bytes as text, from a character's start, trimmed."""
    tail = data[-size:]
    if len(data) > size:
        # Skip UTF-8 continuation bytes: the cut may fall inside a character.
        start = 0
        while start < min(len(tail), 3) and tail[start] & 0xC0 == 0x80:
            start += 1
        tail = tail[start:]
    return tail.decode("utf-8", errors="replace").strip()


def _fits(value: Any, limit: int) -> bool:
    return len(_compact(value).encode()) <= limit


def _bounded_text(text: str, limit: int) -> str:
    # Escapes (control characters, quotes) can grow text as JSON; cut from
    # the front, since the end of an error says most.
    while text and not _fits(text, limit):
        text = text[len(text) // 4 + 1 :]
    return text


@dataclass(frozen=True)
class Finished:
    """How a command ended, with what it wrote (bounded)."""

    returncode: int
    stdout: bytes
    stdout_bytes: int
    stderr: bytes
    terminated: bool = False


class CommandFailed(Exception):
    """The command failed; the text is the task's error."""


class CommandTempFailed(Exception):
    """The command asked for a retry later (EX_TEMPFAIL)."""


class CommandStopped(Exception):
    """The command was terminated because the worker is shutting down."""


class CommandUnstartable(Exception):
    """The command could not be started at all (not executable, no `#!`
    line, ...): every task would fail alike, so the worker must stop."""


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: the client would refuse to send them.
    raise ValueError(f"{name} is not JSON")


def result_of(finished: Finished) -> Any:
    """The result of a command that exited 0 (None: no result)."""
    if finished.stdout_bytes <= RESULT_MAX_BYTES and finished.stdout.strip():
        try:
            value = json.loads(finished.stdout, parse_constant=_no_constant)
        except ValueError:
            pass
        else:
            if _fits(value, RESULT_MAX_BYTES):
                return value
    text = text_tail(finished.stdout)
    return _bounded_text(text, RESULT_MAX_BYTES) if text else None


def error_of(finished: Finished) -> str:
    text = text_tail(finished.stderr)
    if not text:
        code = finished.returncode
        if code < 0:
            try:
                text = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                text = f"killed by signal {-code}"
        else:
            text = f"exit status {code}"
    return _bounded_text(text, ERROR_MAX_BYTES)


class _Drain:
    """Reads a pipe to its end in a thread, keeping only its last `keep` bytes."""

    def __init__(self, stream: IO[bytes], keep: int) -> None:
        self.data = bytearray()
        self.total = 0
        self._stream = stream
        self._keep = keep
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := os.read(self._stream.fileno(), 65536):
                self.total += len(chunk)
                self.data += chunk
                if len(self.data) > self._keep:
                    del self.data[: len(self.data) - self._keep]
        except (OSError, ValueError):
            pass
        finally:
            # The reader owns the pipe: when a grandchild held it past the
            # command's end, the runner left it open for this thread to
            # finish, and it must not linger unclosed.
            try:
                self._stream.close()
            except (OSError, ValueError):
                pass

    def join(self, timeout: float) -> bytes:
        self._thread.join(timeout)
        return bytes(self.data)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def _feed(stream: IO[bytes], data: bytes) -> None:
    # A command may exit without reading its input: that is not an error.
    try:
        stream.write(data)
    except (BrokenPipeError, OSError, ValueError):
        pass
    try:
        stream.close()
    except (BrokenPipeError, OSError, ValueError):
        # Closing flushes what is left; without a reader, drop it.
        pass


class CommandRunner:
    """Runs `argv` for a lease; `stop()` terminates whatever still runs.

    Each command runs in a process group of its own, so that Ctrl-C in a
    terminal reaches `taskq work` only (which lets running commands finish),
    and so that terminating a command reaches what it started too.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        kill_after: float = 5.0,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.kill_after = kill_after
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._by_task: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        # The commands that were terminated: their end is not theirs. Not by
        # pid, which the system gives out again.
        self._signalled: set[subprocess.Popen[bytes]] = set()
        self._stopping = False

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def run(self, lease: LeaseLike) -> Finished:
        with self._lock:
            if self._stopping:
                raise CommandStopped("the worker is shutting down")
            try:
                process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=task_environment(lease, self.env),
                    cwd=self.cwd,
                    process_group=0,
                )
            except OSError as exc:
                raise CommandUnstartable(_unstartable(self.argv[0], exc)) from exc
            self._running.add(process)
            self._by_task[_key(lease)] = process
        assert process.stdin and process.stdout and process.stderr
        try:
            feeder = threading.Thread(
                target=_feed, args=(process.stdin, task_stdin(lease)), daemon=True
            )
            feeder.start()
            out = _Drain(process.stdout, RESULT_MAX_BYTES + 1)
            err = _Drain(process.stderr, TAIL_BYTES)
            returncode = process.wait()
            stdout = out.join(PIPE_GRACE_SECONDS)
            stderr = err.join(PIPE_GRACE_SECONDS)
        finally:
            with self._lock:
                self._running.discard(process)
                if self._by_task.get(_key(lease)) is process:
                    del self._by_task[_key(lease)]
                terminated = process in self._signalled
                self._signalled.discard(process)
        # Each pipe is closed by its reader when it ends (_Drain): closing
        # under a reader still blocked (a grandchild holds the pipe) would
        # race it.
        return Finished(returncode, stdout, out.total, stderr, terminated)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> bool:
        """Terminate the running commands (and start no more), and wait until
        their process groups are gone: SIGTERM, then SIGKILL after
        `kill_after`. False if some group outlived even SIGKILL."""
        with self._lock:
            self._stopping = True
            processes = list(self._running)
        self._signal(processes)
        if _wait_gone(processes, self.kill_after):
            return True
        # Whatever the leader did: children that ignore SIGTERM are its group's.
        for process in processes:
            _signal_group(process, signal.SIGKILL)
        return _wait_gone(processes, KILL_WAIT_SECONDS)

    def stop_for(self, lease: LeaseLike) -> None:
        """Terminate the command running for this lease, if one is (SIGKILL
        `kill_after` later, without waiting)."""
        with self._lock:
            process = self._by_task.get(_key(lease))
        if process is not None and self._signal([process]):
            timer = threading.Timer(self.kill_after, _signal_group, (process, signal.SIGKILL))
            timer.daemon = True
            timer.start()

    def _signal(self, processes: list[subprocess.Popen[bytes]]) -> bool:
        # SIGTERM to each one's process group, once; False if none was new.
        with self._lock:
            # One that run() let go already would stay in the set for good.
            fresh = [p for p in processes if p in self._running and p not in self._signalled]
            self._signalled.update(fresh)
        for process in fresh:
            _signal_group(process, signal.SIGTERM)
        return bool(fresh)

    def wait(self, timeout: float) -> bool:
        """Wait for the running commands to end; False if some still run."""
        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True


def _key(lease: LeaseLike) -> tuple[str, str]:
    # A task can come back to this worker on a new lease while the command
    # of its old one still runs.
    return (lease.id, str(lease.raw.get("lease_token", "")))


def _unstartable(program: str, exc: OSError) -> str:
    text = f"cannot run {program!r}: {exc.strerror or exc}"
    if exc.errno == errno.ENOEXEC:
        text += " (a script needs a #! line)"
    return text


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Not ours to signal: someone else's group took the number.
        return False
    return not _only_zombies(pgid)


def _only_zombies(pgid: int) -> bool:
    # An init that does not reap (a container's) leaves the group's orphans
    # as zombies, which signals still "reach": they run no more, though.
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return False
    return True


def _wait_gone(processes: list[subprocess.Popen[bytes]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        # The leader's own exit is not enough: what it started may run on.
        if not any(_group_alive(p.pid) for p in processes):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


class TaskHandler:
    """The Worker's handler: runs the command for a lease and maps how it
    ended to the release (a return value is the result, an exception the
    error, `Retry` a failure with a wait).

    A command that was terminated because the worker is stopping waits, up
    to `hold` seconds, until `stopped` is set: the worker hands its task back
    idle meanwhile (its grace is over), which a failed release of its own
    would pre-empt. So does a run refused because the worker is stopping,
    and one whose command could not be started at all: that is no fault of
    the task's, so `on_unstartable(message)` is called (to stop the worker)
    and the message kept in `unstartable`. One terminated because its lease
    was lost (`lost()`) ends at once; the worker drops its outcome either way.
    """

    def __init__(
        self,
        runner: CommandRunner,
        *,
        tempfail_code: int = EX_TEMPFAIL,
        retry_after: float | None = 60,
        hold: float = 60.0,
        on_unstartable: Callable[[str], None] | None = None,
    ) -> None:
        self.runner = runner
        self.tempfail_code = tempfail_code
        self.retry_after = retry_after
        self.hold = hold
        self.on_unstartable = on_unstartable
        self.unstartable: str | None = None
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        # By lease, not task: the task may be back here on a new lease.
        self._active: set[tuple[str, str]] = set()
        self._lost: set[tuple[str, str]] = set()

    def lost(self, lease: LeaseLike) -> None:
        """The lease is not ours any more: end its command, whose outcome would not count."""
        with self._lock:
            # Told after the run (a release refused): nothing to end, nothing to keep.
            if _key(lease) not in self._active:
                return
            self._lost.add(_key(lease))
        self.runner.stop_for(lease)

    def __call__(self, lease: LeaseLike) -> object:
        key = _key(lease)
        with self._lock:
            self._active.add(key)
        try:
            return self._run(lease, key)
        finally:
            with self._lock:
                self._active.discard(key)
                self._lost.discard(key)

    def _run(self, lease: LeaseLike, key: tuple[str, str]) -> object:
        try:
            finished = self.runner.run(lease)
        except CommandUnstartable as exc:
            if self.unstartable is None:
                self.unstartable = str(exc)
                if self.on_unstartable is not None:
                    self.on_unstartable(str(exc))
            self._hold()
        except CommandStopped:
            self._hold()
        if finished.terminated:
            with self._lock:
                lost = key in self._lost
            if not lost:
                self._hold()
            raise CommandStopped("terminated")
        if finished.returncode == 0:
            return result_of(finished)
        if finished.returncode == self.tempfail_code:
            raise Retry(error_of(finished), after=self.retry_after)
        raise CommandFailed(error_of(finished))

    def _hold(self) -> NoReturn:
        # Until the worker has handed the task back idle: a failed release
        # now would cost the task a retry for no fault of its own.
        self.stopped.wait(self.hold)
        raise CommandStopped("terminated")
