"""The supervisor of `make run`: the Procfile's processes as one stack.

    python scripts/supervisor.py run [--watch-parent]   # what `make run` execs
    python scripts/supervisor.py stop                   # what `make stop` runs

`run` starts every process of the Procfile (gunicorn, the Celery worker, Celery
beat) and stops all of them when anything ends the stack: SIGINT, SIGTERM or
SIGHUP to the supervisor or (with --watch-parent) to the make that runs it, its
output going away (a `| tee` that died), or any one process exiting. Stopping
is SIGTERM to every process group, then SIGKILL after GRACE_SECONDS, so the
stack is gone within 10 s whatever state it is in. A requested stop exits 0;
a process that exited on its own makes it exit 1.

Why not honcho, which ran the Procfile before: it handles SIGINT and SIGTERM
only, so a SIGHUP (a closed terminal) or a broken output pipe ended honcho
alone and left its processes, each in a session of its own, running; it exits
130 on Ctrl-C, which make reports as an error. And `celery worker --beat`
runs beat in a child of the worker that outlives a worker killed with -9:
here beat is a process of its own, stopped with the rest whatever happens to
the worker, and the run directory's lock keeps it the only one.

Only the standard library: this runs before (and instead of) Django and Celery.
"""

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
PROCFILE = BASE_DIR / "Procfile"

# SIGTERM to SIGKILL. gunicorn's own graceful_timeout (10 s, for production)
# is longer: here the whole stack must be gone within 10 s of the request, and
# the worker's sweeps and gunicorn's requests finish well within this.
GRACE_SECONDS = 6.0
# After SIGKILL, how long to wait for the kernel to reap before reporting.
KILL_WAIT_SECONDS = 3.0
POLL_SECONDS = 0.2
# TASKQ_SUPERVISOR_RESTART=1 (`make cluster`): a process that exits is started
# again after RESTART_DELAY, as systemd would, rather than stop the stack;
# one that exits more than RESTART_LIMIT times a minute stops it after all.
RESTART = os.environ.get("TASKQ_SUPERVISOR_RESTART") == "1"
RESTART_DELAY = 0.5
RESTART_LIMIT = 10
PARENT_SIGNALLED_SECONDS = 0.3

# Every process of the stack inherits this, with the stack's own id: it is how
# `stop` recognises the stack's processes once their supervisor is gone, and
# never mistakes someone else's gunicorn for ours.
STACK_ID_VARIABLE = "TASKQ_STACK_ID"

# SIGQUIT too: Ctrl-\ would otherwise kill the supervisor and leave the stack
# to PR_SET_PDEATHSIG alone, with no one to escalate.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# The signals that make handles by waiting for its children and then dying:
# seeing one of them blocked (in make's handler) or pending in make means make
# is going away (see Supervisor._check_parent).
_FATAL_MASK = sum(
    1 << (s - 1) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
)

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def run_dir() -> Path:
    """Where a stack records itself: var/run/, or TASKQ_RUN_DIR (the tests' own)."""
    return Path(os.environ.get("TASKQ_RUN_DIR") or BASE_DIR / "var" / "run")


def _lock_path() -> Path:
    return run_dir() / "stack.lock"


def _state_path() -> Path:
    return run_dir() / "stack.json"


def read_state() -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(_state_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return state


def _write_state(state: dict[str, Any]) -> None:
    # Replaced whole, so that `stop` never reads half a file.
    tmp = _state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(_state_path())


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None: no such process).

    A pid with its start time names one process for good; a pid alone may have
    been reused since it was recorded.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None  # a zombie: dead, only not reaped yet
    return int(fields[19])


def is_alive(record: dict[str, int]) -> bool:
    return start_time(record["pid"]) == record["start_time"]


def stack_members(stack_id: str) -> list[int]:
    """The live processes, anywhere on the machine, that belong to this stack."""
    needle = f"{STACK_ID_VARIABLE}={stack_id}".encode()
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or another user's
        if needle in environ.split(b"\0") and start_time(int(entry.name)) is not None:
            members.append(int(entry.name))
    return members


def _lock_is_held() -> bool:
    """Whether a stack of this checkout runs: its processes hold the lock."""
    path = _lock_path()
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the lock if we got it
    return False


def procfile() -> Path:
    """The Procfile of `make run`, or TASKQ_PROCFILE (`make cluster` writes its own)."""
    return Path(os.environ.get("TASKQ_PROCFILE") or PROCFILE)


def read_procfile(path: Path | None = None) -> list[tuple[str, list[str]]]:
    """The Procfile's `name: command` lines, each command split as a shell would.

    Each command runs without a shell in between, so the pid the supervisor
    holds (and records) is gunicorn's or Celery's own. `$VARIABLE`s are
    expanded from the environment, as honcho's shell did.
    """
    entries = []
    for line in (path or procfile()).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        entries.append((name.strip(), shlex.split(os.path.expandvars(command))))
    return entries


class Output:
    """Our stdout, with each child's lines prefixed by its name.

    A reader that went away (`| tee` killed by the same Ctrl-C, a closed
    terminal) must stop the stack, not kill the supervisor with SIGPIPE half
    way through: Python ignores SIGPIPE, so a write fails with EPIPE (or EIO on
    a hung-up terminal); from then on output is dropped and `closed` is set.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.closed = False

    def line(self, name: str, text: bytes) -> None:
        if self.closed:
            return
        data = f"{name:<{self.width}} | ".encode() + text + b"\n"
        try:
            while data:
                data = data[os.write(sys.stdout.fileno(), data) :]
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EIO, errno.EBADF):
                self.closed = True
            # Anything else (a full disk under `> log`) loses this line only.

    def note(self, text: str) -> None:
        self.line("system", f"{time.strftime('%H:%M:%S')} {text}".encode())


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    partial: bytes = b""
    reported: bool = False
    # With RESTART: when to start it again, and when it last was.
    restart_at: float | None = None
    restarts: list[float] = field(default_factory=list)


def _child_setup(supervisor_pid: int) -> None:
    """Runs in each child between fork and exec.

    PR_SET_PDEATHSIG: should the supervisor itself be killed with -9, each
    child still gets SIGTERM, rather than run on unsupervised. Checking the
    parent afterwards closes the race with a supervisor that died just before.
    """
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor_pid:
        os._exit(1)


class Supervisor:
    def __init__(self, *, lock_fd: int, watch_parent: bool) -> None:
        self.lock_fd = lock_fd
        self.watch_parent = watch_parent
        self.parent = os.getppid()
        self.parent_signalled_at: float | None = None
        self.children = [Child(name, argv) for name, argv in read_procfile()]
        self.output = Output(max(len("system"), *(len(c.name) for c in self.children)))
        self.poller = select.poll()
        # The fds polled: each child's output, and None for the signal pipe.
        self.sources: dict[int, Child | None] = {}
        self.signals: list[int] = []
        self.stopping = False
        self.exit_code = 0
        self.reason = ""
        self.kill_at = 0.0
        self.killed = False
        self.stack_id = uuid.uuid4().hex
        self.state: dict[str, Any] = {}

    # --- start -----------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        # Signals write their number here, so select() wakes at once.
        signal.set_wakeup_fd(wake_w)
        self.sources[wake_r] = None
        self.poller.register(wake_r, select.POLLIN)
        for signum in _STOP_SIGNALS:
            # An inherited SIG_IGN is kept: `nohup make run` means to survive
            # a hang-up, and make itself keeps ignored signals ignored too.
            if signal.getsignal(signum) != signal.SIG_IGN:
                signal.signal(signum, self._on_signal)
        # A handler, so that a child's exit wakes select() too.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _spawn(self, child: Child) -> None:
        env = {
            **os.environ,
            STACK_ID_VARIABLE: self.stack_id,
            # gunicorn and celery from the same virtualenv as this Python.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        executable = shutil.which(child.argv[0], path=env["PATH"]) or child.argv[0]
        supervisor_pid = os.getpid()
        try:
            child.process = subprocess.Popen(
                [executable, *child.argv[1:]],
                cwd=BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # A process group (and session) of its own: signals are ours to
                # send, never the terminal's, and killpg reaches the children a
                # process forks (gunicorn's workers) even after it died.
                start_new_session=True,
                # The lock is held as long as any process of the stack lives,
                # so a second `make run` cannot start a second beat beside a
                # straggler of this one.
                pass_fds=(self.lock_fd,),
                preexec_fn=lambda: _child_setup(supervisor_pid),
            )
        except OSError as exc:
            self.output.note(f"cannot start {child.name}: {exc}")
            self._stop(f"{child.name} could not start", exit_code=1)
            return
        assert child.process.stdout is not None
        fd = child.process.stdout.fileno()
        os.set_blocking(fd, False)
        self.sources[fd] = child
        self.poller.register(fd, select.POLLIN)
        pid = child.process.pid
        self.state["processes"][child.name] = {"pid": pid, "start_time": start_time(pid) or 0}
        _write_state(self.state)
        self.output.note(f"{child.name} started (pid {pid}): {shlex.join(child.argv)}")

    def _watch_output(self) -> None:
        # A pipe whose reader died shows POLLERR without our writing to it: a
        # `| tee` killed alone stops the stack at once, not at the next line.
        mode = os.fstat(sys.stdout.fileno()).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self.poller.register(sys.stdout.fileno(), 0)

    def run(self) -> int:
        self._install_signal_handlers()
        self._watch_output()
        # Orphans of the stack (gunicorn's workers after their master was
        # killed) become our children, so we reap them and know when they
        # are gone, whatever the machine's init does with zombies.
        _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        me = os.getpid()
        self.state = {
            "state": "running",
            "stack_id": self.stack_id,
            "supervisor": {"pid": me, "start_time": start_time(me)},
            "processes": {},
        }
        _write_state(self.state)
        for child in self.children:
            self._handle_signals()
            if self.stopping:
                break
            self._spawn(child)
        while not self._finished():
            self._step()
        return self._exit()

    # --- the loop --------------------------------------------------------

    def _step(self) -> None:
        for fd, _ in self.poller.poll(POLL_SECONDS * 1000):
            if fd == sys.stdout.fileno():
                self.output.closed = True  # only ever POLLERR or POLLHUP
                self.poller.unregister(fd)
            elif (child := self.sources[fd]) is None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(fd, 4096):
                        pass
            else:
                self._read(child)
        self._handle_signals()
        if self.watch_parent and not self.stopping:
            self._check_parent()
        self._reap()
        self._restart_due()
        if self.output.closed and not self.stopping:
            self._stop("its output was closed", exit_code=0)
        if self.stopping and not self.killed and time.monotonic() >= self.kill_at:
            self.output.note(f"still running after {GRACE_SECONDS:.0f} s: SIGKILL")
            self._signal_all(signal.SIGKILL)
            self.killed = True

    def _restart_due(self) -> None:
        for child in self.children:
            if child.restart_at is None or time.monotonic() < child.restart_at:
                continue
            if self.stopping:
                child.restart_at = None
                continue
            assert child.process is not None and child.process.stdout is not None
            if not child.process.stdout.closed:
                fd = child.process.stdout.fileno()
                self.poller.unregister(fd)
                del self.sources[fd]
                child.process.stdout.close()
            child.restarts.append(time.monotonic())
            child.restart_at = None
            child.process, child.reported, child.partial = None, False, b""
            self._spawn(child)

    def _read(self, child: Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        fd = child.process.stdout.fileno()
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.poller.unregister(fd)
            del self.sources[fd]
            child.process.stdout.close()
            if child.partial:
                self.output.line(child.name, child.partial)
            return
        *lines, child.partial = (child.partial + data).split(b"\n")
        for line in lines:
            self.output.line(child.name, line.rstrip(b"\r"))

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            name = signal.Signals(signum).name
            if not self.stopping:
                self._stop(f"{name} received", exit_code=0)
            elif signum == signal.SIGINT and not self.killed:
                # A second Ctrl-C: the user does not want to wait.
                self.output.note("SIGINT again: SIGKILL")
                self._signal_all(signal.SIGKILL)
                self.killed = True

    def _check_parent(self) -> None:
        """Stop when the make that runs us is dying.

        GNU make forwards SIGTERM to its children but not SIGHUP (nor SIGINT,
        which a terminal sends to the whole group anyway): it waits for them to
        exit and then kills itself with the same signal. A SIGHUP sent to make
        alone would leave it waiting for a stack that never learns of it. While
        make runs that handler the signal is blocked in it (then pending), which
        /proc shows; seen for PARENT_SIGNALLED_SECONDS, it is not one of the
        short blocks make makes around starting a job. A parent that is gone
        (make killed with -9) ends the stack too.
        """
        ppid = os.getppid()
        if ppid != self.parent:
            self._stop("make exited", exit_code=0)
            return
        masks = 0
        try:
            for line in Path(f"/proc/{ppid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("SigBlk", "SigPnd", "ShdPnd"):
                    masks |= int(value, 16)
        except OSError:
            return
        now = time.monotonic()
        if not masks & _FATAL_MASK:
            self.parent_signalled_at = None
        elif self.parent_signalled_at is None:
            self.parent_signalled_at = now
        elif now - self.parent_signalled_at >= PARENT_SIGNALLED_SECONDS:
            self._stop("make was signalled", exit_code=0)

    def _reap(self) -> None:
        for child in self.children:
            if child.process is None or child.reported:
                continue
            code = child.process.poll()
            if code is None:
                continue
            child.reported = True
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            self.output.note(f"{child.name} {how}")
            if self.stopping:
                continue
            now = time.monotonic()
            child.restarts = [t for t in child.restarts if now - t < 60]
            if RESTART and len(child.restarts) < RESTART_LIMIT:
                # What it forked (gunicorn's workers, holding its port) goes
                # with it, so that its successor can bind.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.restart_at = now + RESTART_DELAY
                self.output.note(f"{child.name}: starting again in {RESTART_DELAY:g} s")
                continue
            self._stop(f"{child.name} {how}", exit_code=1)
        # Adopted orphans (see run): peek without reaping, so that Popen still
        # collects its own children's exit codes.
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            if any(c.process is not None and c.process.pid == info.si_pid for c in self.children):
                return  # ours: poll() above gets it on the next step
            os.waitpid(info.si_pid, 0)

    def _stop(self, reason: str, *, exit_code: int) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.reason = reason
        self.exit_code = exit_code
        self.kill_at = time.monotonic() + GRACE_SECONDS
        self.output.note(f"stopping the stack: {reason}")
        # SIGTERM whatever the request: SIGHUP would make gunicorn reload and
        # the Celery worker restart, and SIGINT is a quick, unclean stop for
        # gunicorn. SIGTERM is the graceful stop of all three.
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for child in self.children:
            if child.process is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.process.pid, signum)

    def _group_alive(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # the group id was reused by another user's process
        return True

    def _finished(self) -> bool:
        if not self.stopping:
            return False
        alive = [
            c
            for c in self.children
            if c.process is not None
            and (c.process.poll() is None or self._group_alive(c.process.pid))
        ]
        if not alive:
            return True
        if self.killed and time.monotonic() >= self.kill_at + KILL_WAIT_SECONDS:
            self.output.note("still alive after SIGKILL: " + ", ".join(c.name for c in alive))
            self.exit_code = 1
            return True
        return False

    def _exit(self) -> int:
        for child in list(self.sources.values()):
            if child is not None:
                self._read(child)  # the last lines, if any are left
        self.state.update(state="stopped", reason=self.reason, exit_code=self.exit_code)
        _write_state(self.state)
        self.output.note(f"stopped ({self.reason}), exit code {self.exit_code}")
        return self.exit_code


def run(*, watch_parent: bool) -> int:
    run_dir().mkdir(parents=True, exist_ok=True)
    # For the Procfile: beat keeps its schedule beside the lock that makes it
    # the only beat of this checkout.
    os.environ["TASKQ_RUN_DIR"] = str(run_dir())
    lock_fd = os.open(_lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = read_state().get("supervisor", {}).get("pid", "?")
        print(
            f"taskq is already running from this checkout (supervisor pid {pid}); "
            "`make stop` stops it.",
            file=sys.stderr,
        )
        return 1
    return Supervisor(lock_fd=lock_fd, watch_parent=watch_parent).run()


def stop() -> int:
    """Stop the stack of this checkout: ask its supervisor, then kill what is left."""
    if not _lock_is_held():
        print("taskq is not running from this checkout.")
        return 0
    state = read_state()
    supervisor = state.get("supervisor")
    if supervisor and is_alive(supervisor):
        os.kill(supervisor["pid"], signal.SIGTERM)
        # The supervisor escalates to SIGKILL itself after GRACE_SECONDS.
        if _wait_until(lambda: not _lock_is_held(), GRACE_SECONDS + 2):
            print("taskq stopped.")
            return 0
    else:
        # The supervisor was killed with -9: its processes, found by the id
        # they inherited, got SIGTERM from the kernel (PR_SET_PDEATHSIG);
        # give them the same grace.
        _signal_members(state, signal.SIGTERM)
        if _wait_until(lambda: not _lock_is_held(), GRACE_SECONDS):
            print("taskq stopped.")
            return 0
    _signal_members(state, signal.SIGKILL)
    if _wait_until(lambda: not _lock_is_held(), KILL_WAIT_SECONDS):
        print("taskq stopped (killed).")
        return 0
    print("taskq: some processes of the stack would not stop.", file=sys.stderr)
    return 1


def _signal_members(state: dict[str, Any], signum: int) -> None:
    pids = stack_members(state.get("stack_id") or "-")
    supervisor = state.get("supervisor")
    if supervisor and is_alive(supervisor):
        pids.append(supervisor["pid"])
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="start the stack in the foreground")
    run_parser.add_argument(
        "--watch-parent",
        action="store_true",
        help="stop when the parent (make) is signalled or exits",
    )
    commands.add_parser("stop", help="stop the stack started from this checkout")
    args = parser.parse_args()
    if args.command == "run":
        return run(watch_parent=args.watch_parent)
    return stop()


if __name__ == "__main__":
    sys.exit(main())
