"""Judges a fault-injection history: was anything acknowledged lost or broken?

Pure Python, no database: `check(history, final)` takes what the clients
recorded and the task table as read at the end, and returns a `Report`.

The history is one record per request a client sent (`tests.faults.client`
writes them as JSON lines):

    {"op": "register" | "capture" | "release" | "extend",
     "client": "w3",
     "send": 12.50, "recv": 12.61,          # time.monotonic(), one machine
     "send_wall": ..., "recv_wall": ...,    # time.time(), for people
     "request": <the JSON body sent>,
     "status": 200 | None, "body": <the JSON answer> | None, "error": "..." | None}

The final state is the table once the run has healed and drained:

    {"read_at": <database clock, epoch seconds>,
     "tasks": [{"id", "status", "retries_left", "attempt", "lease_token",
                "lease_expires_at": <epoch seconds> | None}, ...]}

Outcomes. A 2xx answer is an acknowledgement; a 4xx one changed nothing (it
is refused); no answer (a connection error, a timeout) and any 5xx are
*unknown*: the request may have been applied, later even, or not at all. The
per-id answers of release and extend split one acknowledged request further:
an id in `list` was applied, one in `errors` was refused.

Every rule is meant to be sound: it reports a violation only when no outcome
of the unknown requests, and no order of the concurrent ones, explains what
was seen. Time comparisons use the clients' send and receive times: the
database acted on a request somewhere between the two.

Lease windows (`double_lease`). A capture answered with token T for task X
started a lease at some instant of its request, on the database clock
(`statement_timestamp()`), lasting `timeout` seconds from there; a heartbeat
(extend) sets the end again, `seconds` from its own instant, and may shorten
it. Another capture B of X with another token leased X while T was valid if
T's lease surely began before B's instant and surely had not ended by then.
B's instant is at the latest B's receive time, so that is proved when B's
answer arrived before T's *earliest end as of B*: the smallest of

- send time plus seconds of each request that may have set T's end last
  before B: the capture itself, and each extend of T that was acknowledged or
  unknown and sent before B's answer, except those overridden for sure (an
  acknowledged extend sent after their answer, and answered before B was
  sent);
- the send time of each release of T that was acknowledged or unknown and
  sent before B's answer (it may have ended the lease as soon as it was sent).

When B was sent after T's capture was answered, T's lease surely began
first. When the two captures were in flight together, either may have been
first, so it is a violation only when each one's answer arrived before the
other's earliest end. The database's wall clock and the clients' monotonic
clock are taken to run at the same rate, to within `clock_slack` seconds.

Staleness (`stale_token_accepted`): a release or extend with token T that
was applied although, before it was sent, a capture of the same task had
answered another token, and that capture was surely later than T's (sent
after T's capture was answered).
"""

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

OK, REFUSED, UNKNOWN = "ok", "refused", "unknown"
APPLIED = "applied"

KINDS = (
    "lost_registration",
    "lost_done_release",
    "double_lease",
    "over_run",
    "stale_token_accepted",
    "lost_capture",
    "stuck_task",
    "phantom_task",
)
# Reported, never failing a run: a request the server refused with "nothing
# was changed" that was applied after all. A commit whose answer the crash of
# the database swallowed looks exactly like this to the server too.
ANOMALY_KINDS = ("refused_but_applied",)

Record = Mapping[str, Any]
# report(kind, task_id, detail)
Reporter = Callable[[str, str, str], None]


@dataclass(frozen=True)
class Violation:
    kind: str
    task_id: str
    detail: str


@dataclass
class Report:
    violations: list[Violation]
    anomalies: list[Violation]
    stats: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        found = Counter(v.kind for v in self.violations)
        return {kind: found[kind] for kind in KINDS}

    def anomaly_counts(self) -> dict[str, int]:
        found = Counter(v.kind for v in self.anomalies)
        return {kind: found[kind] for kind in ANOMALY_KINDS}


def outcome(record: Record) -> str:
    status = record.get("status")
    if status is None or status >= 500:
        return UNKNOWN
    return OK if 200 <= status < 300 else REFUSED


def _where(record: Record) -> str:
    return (
        f"{record['op']} by {record.get('client', '?')} sent {record['send']:.3f} "
        f"answered {record['recv']:.3f} ({record.get('status') or record.get('error')})"
    )


@dataclass
class _Request:
    """A release or an extend as it concerns one lease."""

    send: float
    recv: float
    # APPLIED, REFUSED or UNKNOWN for this id.
    result: str
    where: str
    release_status: str | None = None
    seconds: int | None = None


@dataclass
class _Lease:
    task_id: str
    token: str
    attempt: int
    timeout: int
    send: float
    recv: float
    where: str
    extends: list[_Request] = field(default_factory=list)
    releases: list[_Request] = field(default_factory=list)

    def earliest_end(self, before: float, settled: float) -> float:
        """The earliest this lease can have ended, as seen by a request sent at
        `settled` and answered at `before` (see the module docstring).

        Only what may have happened before that request counts: a heartbeat
        accepted later (wrongly: `stale_token_accepted`) does not make the
        lease valid back then.
        """
        setters = [(self.send, self.recv, self.timeout, True)] + [
            (e.send, e.recv, self.timeout if e.seconds is None else e.seconds, e.result == APPLIED)
            for e in self.extends
            if e.result != REFUSED and e.send < before
        ]
        candidates = [
            send + seconds
            for send, recv, seconds, _ in setters
            if not any(
                definite and later_send > recv and later_recv < settled
                for later_send, later_recv, _, definite in setters
            )
        ]
        ended = [r.send for r in self.releases if r.result != REFUSED and r.send < before]
        return min([*candidates, *ended])


def per_id_results(record: Record) -> dict[str, str]:
    """APPLIED, REFUSED or UNKNOWN for each id a release or an extend named."""
    ids = [lease["id"] for lease in record["request"]["leases"]]
    whole = outcome(record)
    if whole != OK:
        return dict.fromkeys(ids, whole)
    body = record.get("body") or {}
    listed = {task["id"] for task in body.get("list", [])}
    refused = {error["id"] for error in body.get("errors", [])}
    return {
        task_id: APPLIED if task_id in listed else REFUSED if task_id in refused else UNKNOWN
        for task_id in ids
    }


class _History:
    def __init__(self, records: list[Record]) -> None:
        # id -> (retries_left, timeout) as registered, and the request itself.
        self.sent_tasks: dict[str, dict[str, Any]] = {}
        self.registered_by: dict[str, Record] = {}
        self.leases: dict[tuple[str, str], _Lease] = {}
        self.leases_of: defaultdict[str, list[_Lease]] = defaultdict(list)
        # (op record, id, token, result) for every release and extend.
        self.lease_requests: list[tuple[Record, str, str, str]] = []
        self.duplicate_tokens: list[tuple[_Lease, Record]] = []
        self.ops: Counter[tuple[str, str]] = Counter()
        self.codes: Counter[tuple[str, str]] = Counter()
        for record in records:
            self.ops[record["op"], outcome(record)] += 1
            getattr(self, "_" + record["op"])(record)

    def _register(self, record: Record) -> None:
        tasks = record["request"]
        for task in tasks if isinstance(tasks, list) else [tasks]:
            self.sent_tasks[task["id"]] = task
            self.registered_by[task["id"]] = record

    def _capture(self, record: Record) -> None:
        if outcome(record) != OK:
            return
        for task in record["body"]["list"]:
            lease = _Lease(
                task_id=task["id"],
                token=task["lease_token"],
                attempt=task["attempt"],
                timeout=task["timeout"],
                send=record["send"],
                recv=record["recv"],
                where=_where(record),
            )
            key = (lease.task_id, lease.token)
            if key in self.leases:
                self.duplicate_tokens.append((self.leases[key], record))
                continue
            self.leases[key] = lease
            self.leases_of[lease.task_id].append(lease)

    def _release(self, record: Record) -> None:
        self._lease_request(record, release_status=record["request"]["status"])

    def _extend(self, record: Record) -> None:
        self._lease_request(record, seconds=record["request"].get("timeout"))

    def _lease_request(
        self, record: Record, *, release_status: str | None = None, seconds: int | None = None
    ) -> None:
        results = per_id_results(record)
        body = record.get("body") if outcome(record) == OK else None
        for error in (body or {}).get("errors", []):
            self.codes[record["op"], error["code"]] += 1
        for lease in record["request"]["leases"]:
            task_id, token = lease["id"], lease["lease_token"]
            result = results[task_id]
            if result == APPLIED:
                self.codes[record["op"], APPLIED] += 1
            self.lease_requests.append((record, task_id, token, result))
            held = self.leases.get((task_id, token))
            if held is None:
                continue
            request = _Request(
                send=record["send"],
                recv=record["recv"],
                result=result,
                where=_where(record),
                release_status=release_status,
                seconds=seconds,
            )
            (held.releases if record["op"] == "release" else held.extends).append(request)


def check(
    history: Iterable[Record],
    final: Mapping[str, Any],
    *,
    sweep_grace: float = 10.0,
    clock_slack: float = 0.05,
) -> Report:
    """Every violation the history and the final state show (see the module docstring).

    `sweep_grace`: how long after its expiry a lease may still be in progress
    at the end before the task counts as stuck (the sweeper runs every few
    seconds, and a run may have just missed it).
    """
    records = sorted(history, key=lambda r: r["send"])
    seen = _History(records)
    tasks = {task["id"]: task for task in final["tasks"]}
    violations: list[Violation] = []
    anomalies: list[Violation] = []

    def report(kind: str, task_id: str, detail: str) -> None:
        violations.append(Violation(kind, task_id, detail))

    for task_id, record in seen.registered_by.items():
        result = outcome(record)
        if result == OK and task_id not in tasks:
            report("lost_registration", task_id, f"acknowledged by {_where(record)}, absent")
        elif result != OK and record.get("status") is not None and task_id in tasks:
            # Ids are never sent twice, so only this request could have made it.
            anomalies.append(
                Violation("refused_but_applied", task_id, f"{_where(record)}, yet present")
            )
    for task_id in tasks.keys() - seen.sent_tasks.keys():
        report("phantom_task", task_id, "in the table, never registered by any client")

    for record, task_id, token, result in seen.lease_requests:
        if record["op"] != "release" or record["request"]["status"] != "done":
            continue
        if result != APPLIED:
            continue
        status = tasks.get(task_id, {}).get("status", "absent")
        if status != "done":
            report(
                "lost_done_release",
                task_id,
                f"released done by {_where(record)} (token {token}), {status} at the end",
            )

    for task_id, leases in seen.leases_of.items():
        _check_leases(task_id, leases, report, clock_slack)
        final_attempt = tasks.get(task_id, {}).get("attempt")
        observed = max(lease.attempt for lease in leases)
        if final_attempt is not None and final_attempt < observed:
            report(
                "lost_capture",
                task_id,
                f"a capture answered attempt {observed}, the table ends at {final_attempt}",
            )
    for first, again in seen.duplicate_tokens:
        report(
            "double_lease",
            first.task_id,
            f"token {first.token} handed out by {first.where} and again by {_where(again)}",
        )

    _check_runs(seen, tasks, report)
    _check_stale(seen, report)
    _check_stuck(final, sweep_grace, report)

    stats = _stats(seen, final)
    return Report(violations=violations, anomalies=anomalies, stats=stats)


def _check_leases(task_id: str, leases: list[_Lease], report: Reporter, slack: float) -> None:
    by_attempt: dict[int, _Lease] = {}
    for lease in leases:
        other = by_attempt.setdefault(lease.attempt, lease)
        if other is not lease:
            report(
                "lost_capture",
                task_id,
                f"attempt {lease.attempt} answered twice: {other.where} "
                f"(token {other.token}) and {lease.where} (token {lease.token})",
            )
    for i, a in enumerate(leases):
        for b in leases[i + 1 :]:
            first, second = (a, b) if a.send <= b.send else (b, a)
            surely_ordered = first.recv < second.send
            if surely_ordered and second.attempt < first.attempt:
                report(
                    "lost_capture",
                    task_id,
                    f"attempt {first.attempt} by {first.where}, then attempt "
                    f"{second.attempt} by {second.where}",
                )
            first_end = first.earliest_end(second.recv, second.send)
            inside = second.recv + slack < first_end
            if not surely_ordered:
                inside = inside and first.recv + slack < second.earliest_end(first.recv, first.send)
            if inside:
                report(
                    "double_lease",
                    task_id,
                    f"token {first.token} ({first.where}, valid until at least "
                    f"{first_end:.3f}) and token {second.token} ({second.where})",
                )


def _check_runs(seen: _History, tasks: Mapping[str, Any], report: Reporter) -> None:
    for task_id, leases in seen.leases_of.items():
        sent = seen.sent_tasks.get(task_id)
        if sent is None:
            continue
        retries = sent.get("retries_left", 3)
        # Handing a lease back idle charges no retry: the next capture is free.
        handed_back = sum(
            1
            for lease in leases
            if any(r.release_status == "idle" and r.result != REFUSED for r in lease.releases)
        )
        runs = max(len(leases), tasks.get(task_id, {}).get("attempt") or 0)
        allowed = retries + 1 + handed_back
        if runs > allowed:
            report(
                "over_run",
                task_id,
                f"captured {runs} times; registered with retries_left {retries} and handed "
                f"back idle at most {handed_back} times, so at most {allowed}",
            )


def _check_stale(seen: _History, report: Reporter) -> None:
    for record, task_id, token, result in seen.lease_requests:
        if result != APPLIED:
            continue
        mine = seen.leases.get((task_id, token))
        if mine is None:
            continue
        for newer in seen.leases_of[task_id]:
            if newer.token != token and newer.send > mine.recv and newer.recv < record["send"]:
                verb = "released" if record["op"] == "release" else "extended"
                report(
                    "stale_token_accepted",
                    task_id,
                    f"{verb} by {_where(record)} with token {token} ({mine.where}), "
                    f"though {newer.where} had answered token {newer.token}",
                )
                break


def _check_stuck(final: Mapping[str, Any], grace: float, report: Reporter) -> None:
    read_at = final["read_at"]
    for task in final["tasks"]:
        status, expires = task["status"], task.get("lease_expires_at")
        if status == "in_progress" and (expires is None or expires <= read_at - grace):
            ago = "never" if expires is None else f"{read_at - expires:.1f} s before the read"
            report("stuck_task", task["id"], f"in progress, its lease expired {ago}")
        elif status == "idle" or (status == "failed" and task["retries_left"] > 0):
            report(
                "stuck_task",
                task["id"],
                f"{status} with retries_left {task['retries_left']} after the drain",
            )


def _stats(seen: _History, final: Mapping[str, Any]) -> dict[str, Any]:
    statuses = Counter(
        "failed_for_good" if t["status"] == "failed" and t["retries_left"] == 0 else t["status"]
        for t in final["tasks"]
    )
    return {
        "operations": sum(seen.ops.values()),
        "ops": {f"{op} {result}": n for (op, result), n in sorted(seen.ops.items())},
        "per_id": {f"{op} {code}": n for (op, code), n in sorted(seen.codes.items())},
        "tasks_sent": len(seen.sent_tasks),
        "tasks_acknowledged": sum(
            1 for record in seen.registered_by.values() if outcome(record) == OK
        ),
        "leases_seen": len(seen.leases),
        "max_attempt": max((lease.attempt for lease in seen.leases.values()), default=0),
        "final": dict(sorted(statuses.items())),
    }
