"""The `taskq` command: namespaces, tasks and leases from a shell, and
`taskq work`, a worker that runs any program once per task.

Each command is a function `(client, args) -> exit code`, named by
`set_defaults(run=...)` on its parser; a new command (a namespace's pause or
stats, say) is one more parser and one more function.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from types import FrameType
from typing import Any, NoReturn, TextIO

from . import _cli_command as command
from ._cli_format import Progress, compact_json, fields, format_time, table
from .client import Client
from .errors import ConfigError, Conflict, NotFound, TaskqError, Unavailable
from .models import UNSET, Attempt, Lease, LeaseError, Namespace, NewTask, Task
from .worker import Worker

OK = 0
ERROR = 1
USAGE = 2
NOT_FOUND = 3
CONFLICT = 4
UNAVAILABLE = 5
BROKEN_PIPE = 141
INTERRUPTED = 130

EXIT_CODES = """\
exit codes:
  0    done
  1    the server refused the request (a 4xx other than below, or another error)
  2    usage error: bad arguments, unreadable input, no URL or token
  3    not found: no such namespace or task (`show` of an unknown id included)
  4    conflict: the id is taken, or a lease is stale or no longer in progress
  5    the server is unavailable, or unreachable, after the client's retries
  130  interrupted (Ctrl-C)
"""

WORK_EXIT_CODES = EXIT_CODES.replace(
    "no URL or token\n",
    "no URL or token,\n       or (work) COMMAND could not be started: its tasks are handed back\n",
)

ENVIRONMENT = """\
environment:
  TASKQ_URL    the server, e.g. http://localhost:8000 (or --url)
  TASKQ_TOKEN  the API token (or --token)
"""

JSON_HELP = (
    "print the server's JSON as received (a list as a JSON array), for scripts; "
    "the format is stable"
)

# Bulk registration: the server takes 1,000 tasks a request and bodies up to
# 2 MiB by default; a chunk stays well under both.
CHUNK_TASKS = 500
MAX_CHUNK_TASKS = 1000
MAX_WAIT_SECONDS = 20
CHUNK_BYTES = 1024 * 1024
NEW_TASK_FIELDS = frozenset(
    {
        "id",
        "namespace_id",
        "timeout",
        "retries_left",
        "priority",
        "payload",
        "delay",
        "available_at",
    }
)


# The global options that take a value, as `taskq --url U work ...` spells them.
GLOBAL_VALUED = frozenset({"--url", "--token", "--max-retries", "--http-timeout"})


class UsageError(Exception):
    """Input the command cannot use (exit 2), found after argument parsing."""


# Values given on the command line


def json_or_text(text: str) -> Any:
    """JSON when it parses as JSON, else the text itself: `60`, `null`,
    `{"kind": "none"}` and `all` all say what they look like."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, json_or_text(value)


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def chunk_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_CHUNK_TASKS:
        raise argparse.ArgumentTypeError(f"the server takes at most {MAX_CHUNK_TASKS} a request")
    return value


def wait_seconds(text: str) -> int:
    value = natural_int(text)
    if value > MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(f"the server waits at most {MAX_WAIT_SECONDS} s")
    return value


def natural_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def lease_of(text: str) -> Lease:
    """`ID:TOKEN`, as `capture` prints it. Ids may hold `:`; tokens do not."""
    task_id, sep, token = text.rpartition(":")
    if not sep or not task_id or not token:
        raise argparse.ArgumentTypeError(f"expected ID:TOKEN, got {text!r}")
    return _lease(task_id, token)


def _lease(task_id: str, token: str) -> Lease:
    # Release and extend send only the id and the token.
    return Lease(
        id=task_id,
        namespace_id="",
        status="in_progress",
        timeout=0,
        retries_left=0,
        updated_at=None,
        lease_token=token,
        raw={"id": task_id, "lease_token": token},
    )


def leases_from_text(text: str) -> list[Lease]:
    """Leases from `capture --json` (an array, or `{"list": [...]}`), JSON
    lines, or `ID:TOKEN` lines."""
    stripped = text.strip()
    if not stripped:
        return []
    try:
        whole = json.loads(stripped)
    except ValueError:
        items: list[Any] = []
        for number, line in enumerate(stripped.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    items.append(json.loads(line))
                except ValueError as exc:
                    raise UsageError(f"line {number}: not JSON: {exc}") from None
            else:
                try:
                    items.append(lease_of(line))
                except argparse.ArgumentTypeError as exc:
                    raise UsageError(f"line {number}: {exc}") from None
    else:
        if isinstance(whole, dict) and isinstance(whole.get("list"), list):
            items = whole["list"]
        elif isinstance(whole, list):
            items = whole
        else:
            items = [whole]
    leases = []
    for item in items:
        if isinstance(item, Lease):
            leases.append(item)
            continue
        if not (
            isinstance(item, dict)
            and isinstance(item.get("id"), str)
            and isinstance(item.get("lease_token"), str)
        ):
            raise UsageError(f"not a lease (an object with id and lease_token): {item!r}")
        leases.append(_lease(item["id"], item["lease_token"]))
    return leases


def new_tasks_from_text(text: str, namespace_id: str | None) -> list[NewTask]:
    """Tasks to register from a JSON array or JSON lines of task objects, as
    `POST /v1/task` takes them; `namespace_id` fills in those without one."""
    stripped = text.lstrip()
    numbered: list[tuple[str, Any]]
    if stripped.startswith("["):
        try:
            whole = json.loads(stripped)
        except ValueError as exc:
            raise UsageError(f"not a JSON array: {exc}") from None
        numbered = [(f"item {n}", item) for n, item in enumerate(whole, 1)]
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((f"line {n}", json.loads(line)))
                except ValueError as exc:
                    raise UsageError(f"line {n}: not JSON: {exc}") from None
    tasks = []
    for where, item in numbered:
        if not isinstance(item, dict):
            raise UsageError(f"{where}: a task is a JSON object, not {compact_json(item)[:60]}")
        unknown = sorted(set(item) - NEW_TASK_FIELDS)
        if unknown:
            raise UsageError(f"{where}: unknown field(s) {', '.join(unknown)}")
        if not isinstance(item.get("id"), str):
            raise UsageError(f"{where}: no id")
        namespace = item.get("namespace_id", namespace_id)
        if not isinstance(namespace, str):
            raise UsageError(f"{where}: no namespace_id (give one, or --namespace)")
        given = {k: v for k, v in item.items() if k not in ("id", "namespace_id")}
        tasks.append(NewTask(item["id"], namespace, **given))
    return tasks


def chunked(tasks: Sequence[NewTask], size: int, max_bytes: int) -> Iterator[list[NewTask]]:
    """Runs of at most `size` tasks and about `max_bytes` of JSON each."""
    chunk: list[NewTask] = []
    used = 0
    for task in tasks:
        weight = len(compact_json(task.to_json()).encode()) + 1
        if chunk and (len(chunk) >= size or used + weight > max_bytes):
            yield chunk
            chunk, used = [], 0
        chunk.append(task)
        used += weight
    if chunk:
        yield chunk


# Output


def _out() -> TextIO:
    return sys.stdout


def emit_json(value: Any) -> None:
    out = _out()
    out.write(json.dumps(value, ensure_ascii=False) + "\n")


def emit(text: str) -> None:
    if text:
        _out().write(text + "\n")


def warn(text: str) -> None:
    sys.stderr.write(f"taskq: {text}\n")
    sys.stderr.flush()


def emit_json_stream(values: Iterable[Any]) -> None:
    """A JSON array written as it comes, so that a long list starts at once."""
    out = _out()
    out.write("[")
    count = 0
    for count, value in enumerate(values, 1):
        out.write(("," if count > 1 else "") + "\n" + json.dumps(value, ensure_ascii=False))
    out.write("\n]\n" if count else "]\n")


TASK_COLUMNS = ("ID", "STATUS", "PRI", "ATTEMPT", "RETRIES", "TIMEOUT", "UPDATED", "AVAILABLE")


def task_row(task: Task, payload: bool = False) -> list[Any]:
    row: list[Any] = [
        task.id,
        task.status,
        task.priority,
        task.attempt,
        task.retries_left,
        task.timeout,
        format_time(task.updated_at),
        format_time(task.available_at),
    ]
    if payload:
        row.append(task.raw.get("payload"))
    return row


def task_fields(task: Task) -> str:
    pairs: list[tuple[str, Any]] = [
        ("id", task.id),
        ("namespace", task.namespace_id),
        ("status", task.status),
        ("priority", task.priority),
        ("attempt", task.attempt),
        ("retries_left", task.retries_left),
        ("timeout", task.timeout),
        ("updated_at", format_time(task.updated_at)),
        ("available_at", format_time(task.available_at)),
        ("lease_expires", format_time(task.lease_expires_at)),
    ]
    # Only what the answer carried: registration leaves the payload out.
    for name in ("payload", "result", "last_error"):
        if name in task.raw:
            pairs.append((name, task.raw[name]))
    return fields(pairs)


def namespace_fields(namespace: Namespace) -> str:
    pairs = [("id", namespace.id)]
    pairs += [(key, value) for key, value in namespace.raw.items() if key != "id"]
    return fields(pairs)


def lease_label(lease: Lease) -> str:
    return f"{lease.id}:{lease.lease_token}"


def lease_table(leases: Sequence[Lease], with_payload: bool) -> str:
    headers = ["LEASE", "ATTEMPT", "EXPIRES"]
    if with_payload:
        headers.append("PAYLOAD")
    rows = []
    for lease in leases:
        row: list[Any] = [lease_label(lease), lease.attempt, format_time(lease.lease_expires_at)]
        if with_payload:
            row.append(lease.raw.get("payload"))
        rows.append(row)
    return table(headers, rows)


def report_lease_errors(errors: Sequence[LeaseError]) -> int:
    """Per-lease refusals on stderr; the exit code they make."""
    for problem in errors:
        warn(f"{problem.id}: {problem.code}: {problem.detail}")
    if any(p.code != "not_found" for p in errors):
        return CONFLICT
    return NOT_FOUND if errors else OK


# Commands


def ns_ls(client: Client, args: argparse.Namespace) -> int:
    namespaces = client.list_namespaces()
    if args.json:
        emit_json([n.raw for n in namespaces])
    else:
        emit(table(["ID"], [[n.id] for n in namespaces]) if namespaces else "")
    return OK


def ns_add(client: Client, args: argparse.Namespace) -> int:
    namespace = client.create_namespace(args.id, **dict(args.settings))
    emit_json(namespace.raw) if args.json else emit(namespace_fields(namespace))
    return OK


def ns_show(client: Client, args: argparse.Namespace) -> int:
    namespace = client.get_namespace(args.id)
    if namespace is None:
        warn(f"no namespace {args.id!r}")
        return NOT_FOUND
    emit_json(namespace.raw) if args.json else emit(namespace_fields(namespace))
    return OK


def ns_set(client: Client, args: argparse.Namespace) -> int:
    namespace = client.update_namespace(args.id, **dict(args.settings))
    emit_json(namespace.raw) if args.json else emit(namespace_fields(namespace))
    return OK


def ns_rm(client: Client, args: argparse.Namespace) -> int:
    client.delete_namespace(args.id)
    return OK


# The states a purge takes, as the API names them.
PURGE_STATES = (
    "idle",
    "scheduled",
    "in_progress",
    "lease_expired",
    "done",
    "failed_retry",
    "failed_final",
)
# The throughput figures of a namespace's stats, in the order shown.
THROUGHPUT = ("captured", "done", "failed", "expired")


def ns_stats(client: Client, args: argparse.Namespace) -> int:
    stats = client.namespace_stats(args.id)
    if stats is None:
        warn(f"no namespace {args.id!r}")
        return NOT_FOUND
    if args.json:
        emit_json(stats.raw)
        return OK
    estimated = set(stats.estimated)
    pairs: list[tuple[str, Any]] = [("id", stats.id), ("paused", stats.paused)]
    pairs += [
        (state, f"~{count}" if state in estimated else count)
        for state, count in stats.counts.items()
    ]
    pairs += [
        ("in_flight", stats.in_flight),
        ("oldest_idle_age_seconds", stats.oldest_idle_age_seconds),
    ]
    for window, figures in stats.throughput.items():
        pairs.append(
            (window, ", ".join(f"{figures[name]} {name}" for name in THROUGHPUT if name in figures))
        )
    emit(fields(pairs))
    return OK


def ns_pause(client: Client, args: argparse.Namespace) -> int:
    namespace = client.pause_namespace(args.id)
    emit_json(namespace.raw) if args.json else emit(namespace_fields(namespace))
    return OK


def ns_resume(client: Client, args: argparse.Namespace) -> int:
    namespace = client.resume_namespace(args.id)
    emit_json(namespace.raw) if args.json else emit(namespace_fields(namespace))
    return OK


def ns_purge(client: Client, args: argparse.Namespace) -> int:
    deleted = client.purge_namespace(args.id, args.states, older_than=args.older_than)
    if args.json:
        emit_json({"id": args.id, "deleted": sum(deleted.values()), "by_state": deleted})
    else:
        emit(fields([("deleted", sum(deleted.values())), *deleted.items()]))
    return OK


def task_add(client: Client, args: argparse.Namespace) -> int:
    if args.from_file is not None:
        return task_add_many(client, args)
    if args.id is None or args.namespace is None:
        raise UsageError("task add needs --namespace and --id (or --from FILE)")
    task = client.register_task(
        args.namespace,
        args.id,
        timeout=args.timeout,
        retries_left=args.retries,
        priority=args.priority,
        payload=args.payload,
        delay=args.delay,
        available_at=args.available_at,
    )
    emit_json(task.raw) if args.json else emit(task_fields(task))
    return OK


def task_add_many(client: Client, args: argparse.Namespace) -> int:
    for flag in ("id", "timeout", "retries", "priority", "delay", "available_at"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} goes in the file's tasks with --from")
    if args.payload is not UNSET:
        raise UsageError("--payload goes in the file's tasks with --from")
    tasks = new_tasks_from_text(_read_input(args.from_file), args.namespace)
    progress = Progress(sys.stderr)
    registered: list[Task] = []
    try:
        for chunk in chunked(tasks, args.chunk, CHUNK_BYTES):
            progress.update(f"registered {len(registered)}/{len(tasks)} tasks")
            try:
                registered += client.register_tasks(chunk)
            except TaskqError:
                progress.clear()
                # Chunks are all or nothing: what is before this one is in.
                warn(
                    f"registered {len(registered)} of {len(tasks)} tasks; the chunk "
                    f"from {chunk[0].id!r} to {chunk[-1].id!r} was refused"
                )
                raise
        progress.close(f"registered {len(registered)}/{len(tasks)} tasks")
    finally:
        progress.close()
    if args.json:
        emit_json([task.raw for task in registered])
    else:
        emit(f"registered {len(registered)} tasks")
    return OK


def _read_input(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def task_show(client: Client, args: argparse.Namespace) -> int:
    task = client.get_task(args.id)
    if task is None:
        warn(f"no task {args.id!r}")
        return NOT_FOUND
    emit_json(task.raw) if args.json else emit(task_fields(task))
    return OK


def task_ls(client: Client, args: argparse.Namespace) -> int:
    wanted = ("payload",) if args.payload else ()
    found = client.list_tasks(
        args.namespace, status=args.status or None, fields=wanted, page_size=args.page_size
    )
    tasks = _first(found, args.limit)
    if args.json:
        emit_json_stream(task.raw for task in tasks)
        return OK
    rows = [task_row(task, args.payload) for task in tasks]
    if rows:
        emit(table([*TASK_COLUMNS, *(["PAYLOAD"] if args.payload else [])], rows))
    return OK


def _first(values: Iterator[Task], limit: int | None) -> Iterator[Task]:
    for n, value in enumerate(values):
        if limit is not None and n >= limit:
            return
        yield value


def task_rm(client: Client, args: argparse.Namespace) -> int:
    code = OK
    for task_id in args.ids:
        try:
            client.delete_task(task_id)
        except NotFound:
            # The others still go; the exit code tells that one was missing.
            warn(f"no task {task_id!r}")
            code = NOT_FOUND
    return code


def task_attempts(client: Client, args: argparse.Namespace) -> int:
    attempts = client.attempts(args.id)
    if attempts is None:
        warn(f"no task {args.id!r}")
        return NOT_FOUND
    if args.json:
        emit_json([a.raw for a in attempts])
    elif attempts:
        emit(
            table(
                ["ATTEMPT", "OUTCOME", "CAPTURED", "ENDED", "LEASED_BY", "ERROR/RESULT"],
                [attempt_row(a) for a in attempts],
            )
        )
    return OK


def attempt_row(attempt: Attempt) -> list[Any]:
    outcome = attempt.raw.get("error", attempt.raw.get("result"))
    return [
        attempt.attempt,
        attempt.outcome,
        format_time(attempt.captured_at),
        format_time(attempt.ended_at),
        attempt.leased_by,
        outcome,
    ]


def capture(client: Client, args: argparse.Namespace) -> int:
    leases = client.capture(args.namespace, limit=args.limit, wait=args.wait)
    if args.json:
        emit_json([lease.raw for lease in leases])
    elif leases:
        emit(lease_table(leases, with_payload=True))
    return OK


def _leases_given(args: argparse.Namespace) -> list[Lease]:
    if args.leases:
        leases: list[Lease] = list(args.leases)
        return leases
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("give leases as ID:TOKEN, or pipe `taskq capture --json` in")
    leases = leases_from_text(sys.stdin.read())
    if not leases:
        raise UsageError("no leases on standard input")
    return leases


def release(client: Client, args: argparse.Namespace) -> int:
    leases = _leases_given(args)
    if args.status != "done" and args.result is not UNSET:
        raise UsageError("--result goes with done only")
    if args.status == "done" and (args.error is not UNSET or args.retry_after is not None):
        raise UsageError("--error and --retry-after go with failed or idle only")
    outcome = client.release(
        leases, args.status, result=args.result, error=args.error, retry_after=args.retry_after
    )
    if args.json:
        emit_json(
            {
                "list": [task.raw for task in outcome.released],
                "errors": [asdict(problem) for problem in outcome.errors],
            }
        )
    elif outcome.released:
        emit(table(["ID", "STATUS"], [[t.id, t.status] for t in outcome.released]))
    return report_lease_errors(outcome.errors)


def extend(client: Client, args: argparse.Namespace) -> int:
    leases = _leases_given(args)
    outcome = client.extend(leases, timeout=args.timeout)
    if args.json:
        emit_json(
            {
                "list": [lease.raw for lease in outcome.extended],
                "errors": [asdict(problem) for problem in outcome.errors],
            }
        )
    elif outcome.extended:
        emit(lease_table(outcome.extended, with_payload=False))
    return report_lease_errors(outcome.errors)


# taskq work


WORK_HELP = """\
Runs COMMAND once per task of NAMESPACE, as a worker that any language can
serve. The task goes to the command as JSON on standard input (as capture
answered it, lease_token included) and in the environment:

  TASKQ_TASK_ID    the task's id
  TASKQ_NAMESPACE  its namespace
  TASKQ_ATTEMPT    1 on the first run, 2 on the first retry, ...
  TASKQ_PAYLOAD    the payload as JSON (unset when over 64 KiB: read stdin)

How the command ends decides the release:

  exit 0           done. Standard output that is JSON (up to 64 KiB) is the
                   result; other output is the result as a JSON string (its
                   last 4 KiB); no output, no result.
  exit 75          failed, to be retried after --retry-after seconds
                   (EX_TEMPFAIL; --tempfail-code changes it). Costs a retry.
  anything else    failed, with the last 4 KiB of standard error (or the exit
                   status, if it wrote none) as the error.

Leases are kept alive (extended) while the command runs. On SIGTERM or
Ctrl-C the worker captures no more, lets running commands finish for up to
--grace seconds, then terminates them (SIGTERM to the command's process
group, SIGKILL --kill-after seconds later) and hands their tasks back idle;
leased tasks that had not started are handed back at once. A second signal
ends the grace at once. A SIGTERM stop exits 0, Ctrl-C 130; with --json the
counts (captured, done, failed, handed_back, lost) are printed at the end.
A command whose lease is lost meanwhile (the task was captured again
elsewhere, or an operator ended the lease) is terminated: its outcome would
not count.

A command that cannot be started at all (not executable, a script without
a #! line) stops the worker at once: running commands are terminated, every
task is handed back idle, without costing it a retry, and the exit status
is 2.

Each command runs in a process group of its own: Ctrl-C in the terminal
reaches the worker, not the commands it is letting finish. A task is handed
back only once its command's process group is gone, so that it never runs
twice at once.

The commands inherit the worker's environment, TASKQ_URL and TASKQ_TOKEN
included (so that they can call taskq themselves); unset what they should
not see, e.g. `env -u TASKQ_TOKEN COMMAND`, or pass --token instead.

example:
  taskq work files -- ./checksum.sh
"""


class _Worker(Worker):
    """A Worker that remembers which signal stopped it (Ctrl-C exits 130).

    A second signal only sets `hurry`: the Worker's own reaction, handing
    the running tasks back at once, must wait until their commands are gone
    (`work` ends the grace itself, with `stop()`)."""

    stop_signal: int | None = None
    hurry = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        # Stopping already (a signal, or `work` itself): the Worker's own
        # reaction would be the hurried hand-back.
        if self.stopping:
            self.hurry = True
        else:
            super()._on_signal(signum, frame)


class _LogFormatter(logging.Formatter):
    """The library's warnings (a failed task, a lost lease) as one line each:
    a command's failure is its own business, not a traceback of ours."""

    def format(self, record: logging.LogRecord) -> str:
        lines = [line for line in record.getMessage().strip().splitlines() if line.strip()]
        if len(lines) > 1:
            # The end of a command's stderr says most; the start names the task.
            return f"taskq: {lines[0]} … {lines[-1].strip()}"
        return f"taskq: {lines[0] if lines else ''}"


class _ProgressHandler(logging.Handler):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.setFormatter(_LogFormatter())

    def filter(self, record: logging.LogRecord) -> bool:
        # A command ended for a shutdown or a lost lease: no failure of its
        # own, and the worker drops its outcome.
        stopped = record.exc_info and isinstance(record.exc_info[1], command.CommandStopped)
        return not stopped and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.clear()
        sys.stderr.write(self.format(record) + "\n")
        sys.stderr.flush()


def _executable(name: str) -> bool:
    if os.sep in name:
        return os.path.isfile(name) and os.access(name, os.X_OK)
    return shutil.which(name) is not None


def work(client: Client, args: argparse.Namespace) -> int:
    if not _executable(args.argv[0]):
        raise UsageError(f"cannot run {args.argv[0]!r}: not found, or not executable")
    runner = command.CommandRunner(args.argv, kill_after=args.kill_after)
    # The worker's own grace is a backstop only: the grace timer below ends
    # the grace, once the commands are gone.
    backstop = args.grace + args.kill_after + command.KILL_WAIT_SECONDS + 5
    handler = command.TaskHandler(
        runner,
        tempfail_code=args.tempfail_code,
        retry_after=args.retry_after,
        hold=backstop + 30,
        on_unstartable=lambda message: stop_now(),
    )
    stopping = threading.Event()

    progress = Progress(sys.stderr, interval=0.2)
    log_handler = _ProgressHandler(progress)
    library_log = logging.getLogger("taskq_client")
    # Left in place at the end: a handler thread that the worker abandoned
    # may still log as the process exits (one that was run before goes).
    for old in [h for h in library_log.handlers if isinstance(h, _ProgressHandler)]:
        library_log.removeHandler(old)
    library_log.addHandler(log_handler)
    library_log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    library_log.propagate = False

    def show(final: bool = False) -> None:
        stats = worker.stats
        finished = stats.done + stats.failed + stats.handed_back + stats.lost
        text = (
            f"{args.namespace}: captured {stats.captured}  done {stats.done}  "
            f"failed {stats.failed}  handed back {stats.handed_back}  "
            f"lost {stats.lost}  running {stats.captured - finished}"
        )
        if stopping.is_set() and not final:
            text += f"  (stopping, grace {args.grace:g}s)"
        progress.update(text, force=final)

    def stop_now() -> None:
        worker.hurry = True
        # A second stop() would be the hurried hand-back, before the commands are gone.
        if not worker.stopping:
            worker.stop()

    def grace_timer() -> None:
        # At the end of the grace the worker hands the tasks of commands
        # still running back: another worker may start them then, so the
        # commands must be gone first.
        deadline = time.monotonic() + args.grace
        while not worker.hurry and time.monotonic() < deadline:
            if handler.stopped.wait(0.05):
                return
        if not runner.stop():
            warn("some commands outlived SIGKILL; their tasks are handed back all the same")
        # The second request ends the worker's grace: it hands back now.
        worker.stop()

    def on_event(kind: str, lease: Lease | None) -> None:
        if kind == "stopping":
            stopping.set()
            threading.Thread(target=grace_timer, daemon=True).start()
        elif kind == "lost" and lease is not None:
            # Another worker has the task now (or an operator ended the
            # lease): this run's outcome would not count.
            handler.lost(lease)
        elif kind == "handed_back" and lease is not None:
            # Only if the backstop ran out first: the command is gone by now.
            runner.stop_for(lease)
        elif kind == "done" and args.verbose and lease is not None:
            log_handler.emit(
                logging.makeLogRecord({"msg": f"task {lease.id} done", "levelno": logging.INFO})
            )
        show()

    worker = _Worker(
        client,
        args.namespace,
        handler,
        concurrency=args.concurrency,
        batch=args.batch,
        wait=args.wait,
        grace=backstop,
        on_event=on_event,
    )
    try:
        worker.run()
    finally:
        handler.stopped.set()
        runner.stop()
        if not runner.wait(args.kill_after + 2):
            warn("some commands did not end after SIGKILL")
        show(final=True)
        progress.close()
    if args.json:
        emit_json(asdict(worker.stats))
    if handler.unstartable is not None:
        warn(handler.unstartable)
        return USAGE
    return INTERRUPTED if worker.stop_signal == signal.SIGINT else OK


# The parser


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # Given before or after the command: `taskq --json ns ls` or `taskq ns ls --json`.
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--url", help="the server's URL (default: $TASKQ_URL)", **({"default": None} | default)
    )
    group.add_argument(
        "--token", help="the API token (default: $TASKQ_TOKEN)", **({"default": None} | default)
    )
    group.add_argument(
        "--json", action="store_true", help=JSON_HELP, **({"default": False} | default)
    )
    group.add_argument(
        "--max-retries",
        type=natural_int,
        metavar="N",
        help="retries of a call that failed in passing (default 5)",
        **({"default": 5} | default),
    )
    group.add_argument(
        "--http-timeout",
        type=seconds,
        metavar="SECONDS",
        help="how long to wait for each answer (default 30)",
        **({"default": 30.0} | default),
    )


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def build_parser() -> argparse.ArgumentParser:
    epilog = EXIT_CODES + "\n" + ENVIRONMENT
    parser = argparse.ArgumentParser(
        prog="taskq",
        description="Namespaces, tasks and leases of a taskq server, and a worker for any command.",
        epilog=epilog,
        formatter_class=_Formatter,
    )
    _common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        run: Callable[[Client, argparse.Namespace], int],
        summary: str,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(
            name,
            help=summary,
            description=description or summary,
            epilog=epilog,
            formatter_class=_Formatter,
        )
        sub.set_defaults(run=run)
        _common(sub, suppress=True)
        return sub

    def branch(name: str, summary: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        sub = commands.add_parser(
            name, help=summary, description=summary, epilog=epilog, formatter_class=_Formatter
        )
        return sub.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    ns = branch(
        "ns", "namespaces: list, register, show, change, delete, pause, resume, stats, purge"
    )
    leaf(ns, "ls", ns_ls, "list the namespaces")
    p = leaf(
        ns,
        "add",
        ns_add,
        "register a namespace",
        "Register a namespace, with optional settings: default_timeout, default_retries, "
        "retry_backoff, history. Each VALUE is JSON if it parses as JSON, else text:\n"
        "  taskq ns add Images default_timeout=60 history=all "
        '\'retry_backoff={"kind": "exponential", "base": 5}\'',
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("settings", nargs="*", type=setting, metavar="KEY=VALUE")
    p = leaf(ns, "show", ns_show, "show a namespace and its settings (exit 3 if unknown)")
    p.add_argument("id", metavar="ID")
    p = leaf(
        ns,
        "set",
        ns_set,
        "change a namespace's settings",
        "Change a namespace's settings (default_timeout, default_retries, retry_backoff, "
        "history). Each VALUE is JSON if it parses as JSON, else text; null resets a default:\n"
        "  taskq ns set Images default_timeout=null history=failures",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("settings", nargs="+", type=setting, metavar="KEY=VALUE")
    p = leaf(ns, "rm", ns_rm, "delete a namespace, with all its tasks")
    p.add_argument("id", metavar="ID")
    p = leaf(
        ns,
        "pause",
        ns_pause,
        "pause a namespace's captures (leases taken run on; operator role)",
    )
    p.add_argument("id", metavar="ID")
    p = leaf(ns, "resume", ns_resume, "let a paused namespace's captures lease again")
    p.add_argument("id", metavar="ID")
    p = leaf(
        ns,
        "purge",
        ns_purge,
        "delete a namespace's tasks by state (operator role)",
        "Delete the namespace's tasks in the states given (idle, scheduled, in_progress, "
        "lease_expired, done, failed_retry, failed_final), with their attempt history, in "
        "short batches on the server; prints how many went, per state:\n"
        "  taskq ns purge Images done failed_final --older-than 86400",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("states", nargs="+", choices=PURGE_STATES, metavar="STATE")
    p.add_argument(
        "--older-than",
        type=float,
        metavar="SECONDS",
        help="only tasks last changed more than this many seconds ago",
    )
    p = leaf(
        ns,
        "stats",
        ns_stats,
        "tasks per state, queue lag, leases in flight, throughput (exit 3 if unknown)",
    )
    p.add_argument("id", metavar="ID")

    task = branch("task", "tasks: register, show, list, delete")
    p = leaf(
        task,
        "add",
        task_add,
        "register a task, or many from a file",
        "Register one task from the flags, or many from --from FILE: JSON lines or a JSON "
        "array of task objects as POST /v1/task takes them (id, namespace_id, timeout, "
        "retries_left, priority, payload, delay, available_at), sent in chunks; --namespace "
        "fills in those without a namespace_id. Each chunk is registered whole or not at "
        "all; on an error, the chunks before it stay registered.",
    )
    p.add_argument("--namespace", "-n", metavar="NAMESPACE")
    p.add_argument("--id", metavar="ID")
    p.add_argument("--timeout", type=positive_int, metavar="SECONDS", help="lease length")
    p.add_argument("--retries", type=natural_int, metavar="N", help="retries_left")
    p.add_argument("--priority", type=natural_int, metavar="0-9", help="0 goes first")
    p.add_argument("--payload", type=json_value, default=UNSET, metavar="JSON", help="any JSON")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=natural_int, metavar="SECONDS", help="not before then")
    when.add_argument("--available-at", type=natural_int, metavar="UNIX", help="not before then")
    p.add_argument(
        "--from", dest="from_file", metavar="FILE", help="tasks to register ('-': stdin)"
    )
    p.add_argument(
        "--chunk",
        type=chunk_size,
        default=CHUNK_TASKS,
        metavar="N",
        help=f"tasks per request with --from (default {CHUNK_TASKS}, at most 1000)",
    )
    p = leaf(task, "show", task_show, "show a task, with payload, result and last error")
    p.add_argument("id", metavar="ID")
    p = leaf(task, "ls", task_ls, "list a namespace's tasks, in id order")
    p.add_argument("namespace", metavar="NAMESPACE")
    p.add_argument(
        "--status",
        action="append",
        choices=["idle", "in_progress", "done", "failed"],
        help="only these (repeatable)",
    )
    p.add_argument("--payload", action="store_true", help="with payloads")
    p.add_argument("--limit", type=natural_int, metavar="N", help="at most N tasks")
    p.add_argument("--page-size", type=positive_int, metavar="N", help="tasks per request")
    p = leaf(task, "rm", task_rm, "delete tasks, whatever their state")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = leaf(commands, "attempts", task_attempts, "a task's attempts, newest first")
    p.add_argument("id", metavar="ID")

    p = leaf(
        commands,
        "capture",
        capture,
        "lease tasks; prints each lease as ID:TOKEN",
        "Lease up to --limit tasks of NAMESPACE. Each lease prints as ID:TOKEN, as release "
        "and extend take it; with --json, as the server answered (pipe that into them):\n"
        "  taskq capture Images --limit 10 --json | taskq release done",
    )
    p.add_argument("namespace", metavar="NAMESPACE")
    p.add_argument("--limit", type=positive_int, default=1, metavar="N", help="default 1")
    p.add_argument(
        "--wait", type=wait_seconds, default=0, metavar="SECONDS", help="long poll, up to 20"
    )

    leases_help = "ID:TOKEN as capture prints it; none: read capture's --json output from stdin"
    p = leaf(
        commands,
        "release",
        release,
        "finish leases: done, failed or idle",
        "Finish leases as done (with --result), failed (with --error, --retry-after) or "
        "idle (handed back, no retry charged). Refused leases are reported on stderr "
        "(exit 4, or 3 when all were unknown); the others are released.",
    )
    p.add_argument("status", choices=["done", "failed", "idle"])
    p.add_argument("leases", nargs="*", type=lease_of, metavar="ID:TOKEN", help=leases_help)
    p.add_argument(
        "--result", type=json_or_text, default=UNSET, metavar="JSON", help="JSON, or else text"
    )
    p.add_argument(
        "--error", type=json_or_text, default=UNSET, metavar="JSON", help="JSON, or else text"
    )
    p.add_argument("--retry-after", type=natural_int, metavar="SECONDS")

    p = leaf(
        commands,
        "extend",
        extend,
        "heartbeat: prolong leases",
        "Make leases end --timeout seconds from now (default: each task's own timeout).",
    )
    p.add_argument("leases", nargs="*", type=lease_of, metavar="ID:TOKEN", help=leases_help)
    p.add_argument("--timeout", type=positive_int, metavar="SECONDS")

    p = leaf(
        commands,
        "work",
        work,
        "run a command once per task: a worker in any language",
        WORK_HELP,
    )
    p.usage = "taskq work [OPTIONS] NAMESPACE -- COMMAND [ARGS...]"
    p.epilog = WORK_EXIT_CODES + "\n" + ENVIRONMENT
    p.add_argument("namespace", metavar="NAMESPACE")
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        metavar="N",
        help="commands at once (default 1)",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        metavar="N",
        help="at most N tasks leased per capture (default: --concurrency)",
    )
    p.add_argument(
        "--wait",
        type=wait_seconds,
        default=20,
        metavar="SECONDS",
        help="long poll of each capture (default 20)",
    )
    p.add_argument(
        "--grace",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="on shutdown, how long running commands may finish (default 30)",
    )
    p.add_argument(
        "--kill-after",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="after the grace, SIGTERM to SIGKILL (default 5)",
    )
    p.add_argument(
        "--tempfail-code",
        type=natural_int,
        default=command.EX_TEMPFAIL,
        metavar="CODE",
        help=f"the exit status that asks for a retry later (default {command.EX_TEMPFAIL})",
    )
    p.add_argument(
        "--retry-after",
        type=natural_int,
        default=60,
        metavar="SECONDS",
        help="the wait before that retry (default 60)",
    )
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="a line on stderr per finished task, and the client's retries",
    )
    # Everything after `--` is the command's, options included (main splits it off).
    p.add_argument("argv", nargs="*", metavar="-- COMMAND [ARGS...]")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`taskq work NS [OPTIONS] -- COMMAND ...`: what follows the first `--`
    is the command's own, options included, whatever argparse would make of it."""
    if "--" in argv and _command_of(argv) == "work":
        split = argv.index("--")
        args = parser.parse_args(argv[:split])
        args.argv = [*args.argv, *argv[split + 1 :]]
        return args
    return parser.parse_args(argv)


def _command_of(argv: list[str]) -> str | None:
    valued = iter(argv)
    for token in valued:
        if token == "--":
            return None
        if token in GLOBAL_VALUED:
            next(valued, None)
        elif not token.startswith("-"):
            return token
    return None


def _fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.print_usage(sys.stderr)
    sys.stderr.write(f"taskq: error: {message}\n")
    raise SystemExit(USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, sys.argv[1:] if argv is None else list(argv))
    if args.run is work and not args.argv:
        _fail(parser, "taskq work needs a command: taskq work NAMESPACE -- COMMAND [ARGS...]")
    try:
        client = Client(
            args.url, args.token, timeout=args.http_timeout, max_retries=args.max_retries
        )
    except ConfigError as exc:
        warn(str(exc))
        return USAGE
    try:
        with client:
            code: int = args.run(client, args)
        sys.stdout.flush()
        return code
    except UsageError as exc:
        warn(str(exc))
        return USAGE
    except TaskqError as exc:
        warn(str(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return INTERRUPTED
    except BrokenPipeError:
        # `taskq task ls X | head`: the reader has what it wanted.
        _silence_stdout()
        return BROKEN_PIPE


def exit_code(exc: TaskqError) -> int:
    if isinstance(exc, ConfigError):
        return USAGE
    if isinstance(exc, NotFound):
        return NOT_FOUND
    if isinstance(exc, Conflict):
        return CONFLICT
    if isinstance(exc, Unavailable):
        return UNAVAILABLE
    return ERROR


def _silence_stdout() -> None:
    # Python flushes stdout once more at exit; into a closed pipe, that
    # would print a second traceback.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
