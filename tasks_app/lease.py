"""The lease state machine: a task's states, the transitions between them, and
the SQL statements that take them.

Everything that stores or judges a task's state is derived from the tables in
this module, so a new state or rule is changed here and nowhere else:

- `STATES`: the consistent combinations of a task's columns. The CHECK
  constraint `task_state_consistent` (`Task.Meta`) is built from them, and
  so is every statement's SET of the derived columns (`derived_columns`).
- `CATEGORIES`: the states as operators see them (a lease can be expired, a
  failure final). The dashboard counts them and the admin filters by them.
- `TRANSITIONS`: which categories each operation moves a task out of, into
  what, and what it charges. The operator actions and the import's update
  select their rows from them.

tests/tasks_app/test_state_machine.py holds the database to these tables: the
constraint accepts exactly `STATES`, `CATEGORIES` split every task into
exactly one, and every operation, applied to a task of every category, changes
exactly the tasks `TRANSITIONS` says, into the state it says.

The statements follow. Each is one round trip and its own transaction
(autocommit), with every time decision taken on the database clock, never
the app server's.

The clock is `NOW`: `statement_timestamp()`, unless the session has frozen
it with `SET taskq.frozen_at = '...'`, which only tests do (tests/clock.py);
no session sees another's setting. In autocommit `statement_timestamp()`
equals `now()`, and unlike `now()` it still moves forward between statements
of one transaction (a test, a management command), so a task registered by
one statement is capturable by the next. The expression is STABLE, so it can
bound an index scan; it is written into each statement rather than wrapped
in a SQL function, whose body PostgreSQL would parse again each time it
plans a statement that is not prepared.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from operator import or_
from typing import Any, Literal, NamedTuple

from django.db import models
from django.db.models import F, Q

from taskq_project import channels

NOW = (
    "coalesce(nullif(current_setting('taskq.frozen_at', true), '')::timestamptz,"
    " statement_timestamp())"
)


class TaskStatus(models.TextChoices):
    IDLE = "idle"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    FAILED = "failed"


class LeaseClock(models.Func):
    """The clock of every lease decision (`NOW`), in ORM filters."""

    template = NOW
    output_field = models.DateTimeField()


# --- States ------------------------------------------------------------------------

# Which values of `retries_left` a state holds.
Retries = Literal["any", "some", "none"]
# What `available_at` holds: when the task (re)joins its queue (which a delay,
# a `retry_after` or a backoff may put in the future), when its lease's
# retry is due (a leased task with a retry left is capturable once its lease
# has expired and its backoff passed), or NULL (never capturable: finished,
# or leased with no retry to pay a re-lease).
Available = Literal["queued", "after_lease", None]

# Capture takes lower numbers first; 0 is the default.
PRIORITIES = tuple(range(10))
# The channel of NOTIFY and of long polling's LISTEN.
WORK_CHANNEL = channels.WORK_CHANNEL
# How many ended attempts of each task the history keeps, at least.
HISTORY = 10


@dataclass(frozen=True)
class State:
    """One consistent combination of status, retries and the derived columns.

    The two derived columns keep the hot paths to one index range scan each,
    in the manner of River's and Oban's `scheduled_at`: `available_at` is
    when the task becomes capturable, `lease_expires_at` is set exactly while
    it is in progress.
    """

    status: TaskStatus
    retries: Retries
    available: Available
    leased: bool


STATES = (
    State(TaskStatus.IDLE, "any", "queued", leased=False),
    State(TaskStatus.IN_PROGRESS, "some", "after_lease", leased=True),
    State(TaskStatus.IN_PROGRESS, "none", None, leased=True),
    State(TaskStatus.DONE, "any", None, leased=False),
    State(TaskStatus.FAILED, "some", "queued", leased=False),
    State(TaskStatus.FAILED, "none", None, leased=False),
)
LEASED_STATUSES = tuple(dict.fromkeys(s.status for s in STATES if s.leased))


def _retries_lookup(retries: Retries) -> dict[str, int]:
    return {"any": {}, "some": {"retries_left__gt": 0}, "none": {"retries_left": 0}}[retries]


def _state_q(state: State) -> Q:
    lookups: dict[str, Any] = {"status": state.status, **_retries_lookup(state.retries)}
    lookups["lease_expires_at__isnull"] = not state.leased
    lookups["available_at__isnull"] = state.available is None
    if state.available == "after_lease":
        # Not NULL as well: a CHECK passes when its condition is NULL, which
        # `available_at >= lease_expires_at` is when either is.
        lookups["available_at__gte"] = F("lease_expires_at")
    return Q(**lookups)


# `Task.Meta`'s CHECK constraint: a row is in exactly one of STATES, so no code
# path (SQL, ORM, admin) can store a task that capture would treat otherwise
# than its status says.
STATE_CONSISTENT = reduce(or_, (_state_q(state) for state in STATES))


def _retries_sql(retries: Retries, column: str) -> str | None:
    return {"any": None, "some": f"{column} > 0", "none": f"{column} = 0"}[retries]


class Derived(NamedTuple):
    """The derived columns' values (SQL) for a task entering a state."""

    available_at: str
    lease_expires_at: str

    @property
    def assignments(self) -> str:
        return f"available_at = {self.available_at}, lease_expires_at = {self.lease_expires_at}"


def derived(
    status: TaskStatus | str,
    retries: str,
    *,
    queued: str = NOW,
    expires: str = "NULL",
    retry_at: str | None = None,
) -> Derived:
    """`available_at` and `lease_expires_at` for a task entering `status` with
    `retries` retries left, as STATES derive them.

    `status` is a known status (the statement's target) or a SQL expression;
    `queued` is when the task joins its queue, `expires` when a lease it
    enters ends, `retry_at` when that lease's retry is due (default: at
    expiry). Every argument is SQL; in an UPDATE's SET list each reads the
    row as it was before the update.
    """
    values: dict[Available, str | None] = {
        "queued": queued,
        "after_lease": retry_at or expires,
        None: None,
    }
    return Derived(
        _column(status, retries, lambda state: values[state.available]),
        _column(status, retries, lambda state: expires if state.leased else None),
    )


def _column(status: TaskStatus | str, retries: str, value: Callable[[State], str | None]) -> str:
    if not isinstance(status, TaskStatus):
        return _case([(f"{status} = '{s}'", _column(s, retries, value)) for s in TaskStatus])
    states = [s for s in STATES if s.status == status]
    return _case([(_retries_sql(s.retries, retries), value(s)) for s in states])


def _case(branches: list[tuple[str | None, str | None]]) -> str:
    """A CASE of the branches that give a value, NULL otherwise; no CASE when
    every branch gives the same value."""
    values = [value or "NULL" for _, value in branches]
    if len(set(values)) == 1:
        return values[0]
    whens = " ".join(
        f"WHEN {when} THEN {value}"
        for (when, _), value in zip(branches, values, strict=True)
        if value != "NULL"
    )
    return f"CASE {whens} END"


# --- Categories --------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """The tasks of one status (and retries) whose lease, if any, is valid or
    has expired: what the dashboard counts and the admin filters by."""

    name: str
    label: str
    status: TaskStatus
    retries: Retries = "any"
    lease: Literal["valid", "expired", None] = None
    # Whether the task's turn has come (`available_at` past) or is to come.
    turn: Literal["come", "later", None] = None
    # Its name in the API, the CLI and the metrics, where it differs.
    public: str | None = None

    @property
    def public_name(self) -> str:
        return self.public or self.name

    def where(self, table: str = "") -> str:
        """This category's rows as a SQL condition (on the lease clock);
        `table` qualifies the columns ("t.")."""
        terms = [f"{table}status = '{self.status}'"]
        if retry := _retries_sql(self.retries, f"{table}retries_left"):
            terms.append(retry)
        if self.lease == "valid":
            terms.append(f"{table}lease_expires_at > {NOW}")
        elif self.lease == "expired":
            terms.append(f"{table}lease_expires_at <= {NOW}")
        if self.turn == "come":
            terms.append(f"{table}available_at <= {NOW}")
        elif self.turn == "later":
            terms.append(f"{table}available_at > {NOW}")
        return " AND ".join(terms)

    @property
    def q(self) -> Q:
        """This category's rows as an ORM filter (on the lease clock)."""
        lookups: dict[str, Any] = {"status": self.status, **_retries_lookup(self.retries)}
        if self.lease == "valid":
            lookups["lease_expires_at__gt"] = LeaseClock()
        elif self.lease == "expired":
            lookups["lease_expires_at__lte"] = LeaseClock()
        if self.turn == "come":
            lookups["available_at__lte"] = LeaseClock()
        elif self.turn == "later":
            lookups["available_at__gt"] = LeaseClock()
        return Q(**lookups)


CATEGORIES = (
    Category("idle", "Idle", TaskStatus.IDLE, turn="come"),
    # Registered with a delay, or handed back with `retry_after`.
    Category("scheduled", "Scheduled", TaskStatus.IDLE, turn="later"),
    Category("in_progress", "In progress", TaskStatus.IN_PROGRESS, lease="valid"),
    Category(
        "expired", "Lease expired", TaskStatus.IN_PROGRESS, lease="expired", public="lease_expired"
    ),
    Category("done", "Done", TaskStatus.DONE),
    Category("failed_retry", "Failed, will retry", TaskStatus.FAILED, retries="some"),
    Category(
        "failed_for_good",
        "Failed for good",
        TaskStatus.FAILED,
        retries="none",
        public="failed_final",
    ),
)
CATEGORY = {category.name: category for category in CATEGORIES}
# The categories by the names the API gives them.
PUBLIC_CATEGORY = {category.public_name: category for category in CATEGORIES}


def any_of(names: tuple[str, ...], table: str = "") -> str:
    """SQL selecting the tasks of the named categories; a status whose
    categories are all named is tested by status alone."""
    whole = [
        status
        for status in TaskStatus
        if all(c.name in names for c in CATEGORIES if c.status == status)
    ]
    terms = [f"({CATEGORY[n].where(table)})" for n in names if CATEGORY[n].status not in whole]
    if whole:
        terms.insert(0, f"{table}status IN ({', '.join(repr(str(s)) for s in whole)})")
    return " OR ".join(terms)


# --- Transitions -------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """What an operation requires of a task and what it makes of it.

    `sources`: the categories it moves a task out of; every other task is left
    as it is (and reported: a per-id error, a skipped count). `target`: the
    status it leaves, None when the caller names it. `charges`: it costs a
    retry for a task that is not idle, so such a task needs one left.
    `queued`: where a task it makes capturable joins its queue.
    """

    sources: tuple[str, ...]
    target: TaskStatus | None
    queued: Literal["now", "kept", None] = "now"
    charges: bool = False


_LEASED = ("in_progress", "expired")
_NOT_LEASED = ("idle", "scheduled", "done", "failed_retry", "failed_for_good")
_NOT_LEASED_UNFINISHED = ("idle", "scheduled", "failed_retry", "failed_for_good")

TRANSITIONS = {
    # A worker leases a task whose turn has come. A task on its first try
    # (idle) is free; any other (a failure once its backoff passed, an
    # expired lease) is a retry. Lower priorities first, then by turn.
    "capture": Transition(
        ("idle", "failed_retry", "expired"), TaskStatus.IN_PROGRESS, None, charges=True
    ),
    # The holder finishes its lease: done, failed (retried at once while it
    # has retries) or idle (handed back, no retry spent).
    "release": Transition(_LEASED, None),
    # The holder's heartbeat: the lease ends later (or sooner), nothing else.
    "extend": Transition(_LEASED, TaskStatus.IN_PROGRESS, None),
    # The sweeper ends an expired lease: the task failed, and a retry keeps
    # the turn its capture set (the lease's expiry, plus the backoff). No
    # retry is charged here: the capture that takes the task again pays, so
    # one expiry is charged once.
    "expire": Transition(("expired",), TaskStatus.FAILED, "kept"),
    # Operators (admin). Ending a lease clears its token, so the holder's
    # release or extend is refused as stale.
    # Requeue also brings a scheduled task's turn forward to now.
    "requeue": Transition(
        ("scheduled", "done", "failed_retry", "failed_for_good"), TaskStatus.IDLE
    ),
    "cancel_lease": Transition(_LEASED, TaskStatus.IDLE),
    # Never over a valid lease: its worker may still be at it.
    "mark_done": Transition((*_NOT_LEASED_UNFINISHED, "expired"), TaskStatus.DONE),
    "mark_failed": Transition(("idle", "scheduled", "done", "expired"), TaskStatus.FAILED),
    # `import_tasks --on-conflict update`: any state the file gives, never
    # over a lease; a task that was waiting keeps its turn.
    "import_update": Transition(_NOT_LEASED, None, "kept"),
    # A registration (API, admin) or import of a new task, in any status; one
    # registered in progress is leased from then, as if captured.
    "register": Transition((), None),
}


# --- Statements --------------------------------------------------------------------


def _charge(status: str) -> str:
    """The retries a capture of a task in `status` costs (SQL)."""
    assert TRANSITIONS["capture"].charges
    return f"({status} <> '{TaskStatus.IDLE}')::int"


def queued_at(name: str) -> str:
    """Where a task that transition `name` makes capturable joins its queue."""
    return {
        "now": NOW,
        "kept": f"coalesce(t.available_at, {NOW})",
        None: "NULL",
    }[TRANSITIONS[name].queued]


TASK_COLUMNS = (
    "id, namespace_id, timeout, retries_left, updated_at, status, lease_expires_at, attempt,"
    " priority, available_at"
)
_T_COLUMNS = ", ".join("t." + column.strip() for column in TASK_COLUMNS.split(","))

# Added to statements that finish tasks, as a data-modifying CTE over the rows
# they changed: one Throughput row per namespace and statement, never an
# update of a shared counter, so concurrent releases do not queue on a row.
# `failed` counts failures given (by a worker's release or an operator);
# leases that ended by running out are `expired`, logged by the sweeper and
# by the capture that takes such a lease over.
_LOG_THROUGHPUT = f"""
    INSERT INTO tasks_app_throughput (namespace_id, at, done, failed)
    SELECT namespace_id, {NOW},
           count(*) FILTER (WHERE status = 'done'),
           count(*) FILTER (WHERE status = 'failed')
    FROM {{source}}
    WHERE status IN ('done', 'failed')
    GROUP BY namespace_id
"""


def _backoff(attempt: str, namespace: str) -> str:
    """How long a retry waits after attempt `attempt` failed or expired, as an
    interval, under the settings of namespace row `namespace` (none: 0).

    The exponent is capped so that `power` never overflows; `backoff_max`
    caps the wait long before."""
    return (
        f"CASE WHEN {namespace}.backoff_base IS NULL THEN interval '0' ELSE make_interval("
        f"secs => least({namespace}.backoff_max, {namespace}.backoff_base"
        f" * power(2, least(greatest({attempt} - 1, 0), 60)))"
        f" * (1 - {namespace}.backoff_jitter * random())) END"
    )


def _backoff_of(attempt: str, namespace_id: str) -> str:
    """`_backoff` for the namespace `namespace_id` names, read only when used."""
    return (
        f"(SELECT {_backoff(attempt, 'n')} FROM namespaces_app_namespace AS n"
        f" WHERE n.id = {namespace_id})"
    )


def _record_attempts(
    source: str, *, outcome: str, ended_at: str = NOW, error: str = "NULL", result: str = "NULL"
) -> str:
    """CTEs that write the ended attempts of `source` (rows with id, attempt,
    leased_at, leased_by) to the history and drop what falls out of it.

    Attempt 0 is a task registered in progress, never captured: no attempt.
    Each task keeps its last HISTORY attempt numbers; the prune is a range
    scan of the primary key, run only for tasks past HISTORY attempts."""
    return f"""
recorded AS (
    INSERT INTO tasks_app_attempt
        (task_id, attempt, captured_at, ended_at, outcome, error, result, leased_by)
    SELECT r.id, r.attempt, r.leased_at, {ended_at}, {outcome}, {error}, {result}, r.leased_by
    FROM {source} AS r
    WHERE r.attempt > 0
    ON CONFLICT DO NOTHING
), pruned AS (
    -- The EXISTS is a one-time filter: without a task past HISTORY attempts
    -- (nearly always) the delete does nothing at all, whatever plan a
    -- prepared statement's generic plan chose for the join (made over an
    -- empty attempt table, a scan of the whole table).
    DELETE FROM tasks_app_attempt AS a
    USING (SELECT id, attempt FROM {source} WHERE attempt > {HISTORY}) AS r
    WHERE a.task_id = r.id AND a.attempt <= r.attempt - {HISTORY}
      AND EXISTS (SELECT FROM {source} WHERE attempt > {HISTORY})
)"""


# Lease up to %(limit)s capturable tasks of one namespace, lower priorities
# first, each level in the order the tasks' turns came.
#
# One index range scan per priority level, in order, and none past the level
# that fills the batch: the LIMIT above the LATERAL join stops pulling rows,
# and so stops locking them, once it has %(limit)s. Each scan ends at the
# clock (`available_at <= now` bounds the index range), so tasks delayed into
# the future cost a capture nothing.
#
# The MATERIALIZED CTE is evaluated once, so LIMIT holds: written as
# `UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`, the
# planner may turn the sub-select into a join that locks and returns more than
# n rows. (PostgreSQL does not fold a CTE that locks rows into the outer
# query either; MATERIALIZED states it, and test_task_table holds the plan to
# a CTE.) SKIP LOCKED lets concurrent captures pass each other instead of
# queueing on the same head-of-line rows; each row it locks is re-checked
# against the WHERE clause on its latest version, so a task leased by a
# capture that committed in between is not leased again, and the values it
# returns are that latest version's.
#
# Every capture starts a new lease: a fresh random token (the fence that
# release and extend check), the next attempt number, its start and the name
# of the token that took it (%(holder)s). A lease it takes over from a holder
# whose lease expired (the sweeper had not come by) ends that attempt as
# expired.
#
# A retry left is due when the lease expires plus the namespace's backoff
# for this attempt, so the sweeper and a later capture agree on it.
#
# The answer lists the leases in the order they were queued: an UPDATE's
# RETURNING follows whatever join the planner chose, not the CTE's order.
#
# Capturing anything but an idle task is a retry and costs one. The SET list
# reads `t`, the row's latest version (PostgreSQL re-reads a row updated since
# the statement's snapshot), never a value copied out of the snapshot.
_CAPTURE_RETRIES = f"t.retries_left - {_charge('t.status')}"
_CAPTURE_EXPIRES = f"{NOW} + make_interval(secs => t.timeout)"
_CAPTURE_DERIVED = derived(
    TaskStatus.IN_PROGRESS,
    _CAPTURE_RETRIES,
    expires=_CAPTURE_EXPIRES,
    retry_at=f"{_CAPTURE_EXPIRES} + {_backoff('t.attempt + 1', 'n')}",
).assignments
#
# The namespace's controls gate the whole statement: a one-time filter,
# evaluated before any task is scanned or locked. A paused namespace leases
# nothing. One with `max_in_flight` leases nothing here either: its captures
# are CAPTURE_LIMITED, run by tasks_app.services.capture_tasks under a lock
# on the namespace row after counting its valid leases (IN_FLIGHT), since a
# single statement would count them from a snapshot older than the lock.
# Without a pause or a limit, the gate costs one primary-key probe.
_CAPTURE_GATE = """NOT EXISTS (
        SELECT FROM namespaces_app_namespace
        WHERE id = %(namespace_id)s AND (paused_at IS NOT NULL OR max_in_flight IS NOT NULL)
    )"""


def _capture(gate: str) -> str:
    return f"""
WITH picked AS MATERIALIZED (
    SELECT c.*
    FROM generate_series({PRIORITIES[0]}, {PRIORITIES[-1]}) AS p(priority)
    CROSS JOIN LATERAL (
        SELECT id, priority, available_at, status, attempt, leased_at, leased_by,
               lease_expires_at
        FROM tasks_app_task
        WHERE namespace_id = %(namespace_id)s
          AND priority = p.priority
          AND available_at <= {NOW}
        ORDER BY available_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    WHERE {gate}
    LIMIT %(limit)s
), leased AS (
    UPDATE tasks_app_task AS t
    SET status = 'in_progress',
        retries_left = {_CAPTURE_RETRIES},
        updated_at = {NOW},
        {_CAPTURE_DERIVED},
        lease_token = gen_random_uuid(),
        attempt = t.attempt + 1,
        leased_at = {NOW},
        leased_by = %(holder)s
    FROM picked, namespaces_app_namespace AS n
    WHERE t.id = picked.id AND n.id = %(namespace_id)s
    RETURNING {_T_COLUMNS}, t.lease_token::text AS lease_token, t.payload,
              picked.available_at AS queued_at
), taken_over AS (
    SELECT id, attempt, leased_at, leased_by, lease_expires_at
    FROM picked
    WHERE status = 'in_progress'
), {_record_attempts("taken_over", outcome="'expired'", ended_at="r.lease_expires_at")},
logged AS (
    -- Counted for taskq_tasks_captured_total; a capture that leases nothing
    -- writes nothing.
    INSERT INTO tasks_app_throughput (namespace_id, at, captured, expired)
    SELECT %(namespace_id)s, {NOW}, count(*), (SELECT count(*) FROM taken_over)
    FROM leased
    HAVING count(*) > 0
)
SELECT {TASK_COLUMNS}, lease_token, payload FROM leased ORDER BY priority, queued_at, id
"""


CAPTURE = _capture(_CAPTURE_GATE)
# The same, for a namespace whose row the caller holds locked (FOR NO KEY
# UPDATE, which every other limited capture of it waits on) and whose free
# slots it passed as %(limit)s: max_in_flight less IN_FLIGHT.
CAPTURE_LIMITED = _capture("TRUE")

# The valid leases of namespace %(namespace_id)s: in progress, not expired.
# From the sweeper's index of leases, which holds the in-progress tasks only.
IN_FLIGHT = f"""
SELECT count(*)
FROM tasks_app_task
WHERE status = 'in_progress' AND lease_expires_at > {NOW} AND namespace_id = %(namespace_id)s
"""

# Lock a namespace's row for a limited capture, and read its controls.
LOCK_FOR_CAPTURE = """
SELECT paused_at IS NOT NULL, max_in_flight
FROM namespaces_app_namespace
WHERE id = %(namespace_id)s
FOR NO KEY UPDATE
"""


def capture_params(namespace_id: str, limit: int, holder: str | None = None) -> dict[str, Any]:
    """CAPTURE's parameters. Its rows: TASK_COLUMNS, lease_token, payload."""
    return {"namespace_id": namespace_id, "limit": limit, "holder": holder}


# Where a captured row carries its lease token.
CAPTURED_TOKEN = len(TASK_COLUMNS.split(", "))


# The fence shared by release and extend.
#
# `seen` reads every id asked for (within the token's scope) from the
# statement's snapshot. Only the rows in progress there can be released or
# extended, and only those are locked (`locked`), in id order, so overlapping
# batches take their locks in the same order and never deadlock each other,
# and a row that was not in progress never makes the statement wait on
# whoever holds it (an import, an operator). FOR UPDATE waits for a
# concurrent change to such a row to commit and returns the row's latest
# version; its WHERE names only the id, so the row comes back whatever that
# version's state, and the decision is taken on it. A row missing from
# `locked` although `seen` had it in progress was deleted meanwhile.
#
# `decided` names, for every id asked for, why it is refused (NULL when it
# goes through): the code and the state it reports come from the row that
# decided, in this statement, never from a second read. It carries what the
# release gives each lease (`result`, `error`: JSON text, NULL when none).
#
# The id and token arrays travel in binary (`%(...)b`): psycopg dumps a list
# of strings several times faster that way than as an array literal, which it
# must quote element by element (bench/fence.py measures the difference).
# The result and error arrays are NULL unless a release gives any: unnest
# pads a NULL array with NULLs.
#
# A NULL token (the seed's `task_ids` form) accepts whichever lease the task
# is under. A token that is not the task's latest lease is stale whatever the
# task's state: the task was captured again since, or an operator or an
# import ended or replaced its lease (both clear the token). The latest
# lease's own token on a task no longer in progress (released, or reclaimed
# by the sweeper) is `not_in_progress`.
_FENCE = """
WITH asked AS (
    SELECT a.id, a.token, a.result, a.error
    FROM unnest(%(ids)b::text[], %(tokens)b::text[], %(results)s::text[], %(errors)s::text[])
         AS a(id, token, result, error)
), seen AS MATERIALIZED (
    SELECT t.id, t.status, t.lease_token
    FROM tasks_app_task AS t
    WHERE t.id = ANY(%(ids)b::text[])
      AND (%(scope)s::text[] IS NULL OR t.namespace_id = ANY(%(scope)s::text[]))
), locked AS MATERIALIZED (
    SELECT t.id, t.status, t.lease_token
    FROM tasks_app_task AS t
    WHERE t.id = ANY(ARRAY(SELECT seen.id FROM seen WHERE seen.status = 'in_progress'))
    ORDER BY t.id
    FOR UPDATE
), decided AS MATERIALIZED (
    SELECT asked.id, coalesce(locked.status, seen.status) AS status,
           asked.result, asked.error,
           CASE
               WHEN seen.id IS NULL THEN 'not_found'
               WHEN locked.id IS NULL AND seen.status = 'in_progress' THEN 'not_found'
               WHEN asked.token IS NOT NULL
                    AND (CASE WHEN locked.id IS NULL THEN seen.lease_token
                              ELSE locked.lease_token END)::text IS DISTINCT FROM asked.token
                   THEN 'stale_lease'
               WHEN coalesce(locked.status, seen.status) <> 'in_progress'
                   THEN 'not_in_progress'
           END AS problem
    FROM asked
    LEFT JOIN seen ON seen.id = asked.id
    LEFT JOIN locked ON locked.id = asked.id
)"""


# What a fenced statement answers: a row per id asked for, in no particular
# order (the caller puts them in the order it asked): the task's columns and
# NULL problem when it went through, the id with its problem and the state
# that decided it when not. `{source}` is the CTE of the rows it changed.
# UNION ALL of the two, not a join of `decided` with `{source}`: on the hot
# path nothing is refused, and the second branch is an empty filter.
def _fence_answer(columns: list[str], source: str, force: str | None = None) -> str:
    changed = ", ".join(f"r.{column}" for column in columns)
    refused = ", ".join(["decided.id", *["NULL"] * (len(columns) - 1)])
    # A plain SELECT in a WITH runs only if read: `force` names one that must.
    forced = f"WHERE (SELECT count(*) FROM {force}) >= 0" if force else ""
    return f"""
SELECT NULL AS problem, NULL AS status, {changed} FROM {source} AS r {forced}
UNION ALL
SELECT decided.problem, decided.status, {refused} FROM decided WHERE decided.problem IS NOT NULL
"""


# Finish the leases of %(ids)s with %(status)s (done, failed or idle), fenced
# by %(tokens)s (see _FENCE). A task failed with retries left, or handed back
# idle, is capturable again after %(retry_after)s seconds when given, else at
# once when idle, and after the namespace's backoff when failed; one handed
# back keeps its retries. The token stays, so the holder's second release is
# `not_in_progress`, not stale.
#
# `done` stores the lease's result (none: NULL); `failed` and `idle` store
# its error when one is given. The ended attempt goes to the history: every
# one, or all but done ones, as the namespace keeps it (`history`).
_RELEASE_QUEUED = (
    f"{NOW} + coalesce(make_interval(secs => %(retry_after)s::int),"
    f" CASE WHEN %(status)s::text = 'failed'"
    f" THEN {_backoff_of('t.attempt', 't.namespace_id')} END, interval '0')"
)
_RELEASE_OUTCOME = (
    "CASE %(status)s::text WHEN 'done' THEN 'done' WHEN 'failed' THEN 'failed'"
    " ELSE 'handed_back' END"
)
RELEASE = f"""
{_FENCE}, released AS (
    UPDATE tasks_app_task AS t
    SET status = %(status)s::text,
        updated_at = {NOW},
        {derived("%(status)s::text", "t.retries_left", queued=_RELEASE_QUEUED).assignments},
        result = CASE WHEN %(status)s::text = 'done' THEN decided.result::jsonb
                      ELSE t.result END,
        last_error = CASE WHEN %(status)s::text <> 'done' AND decided.error IS NOT NULL
                          THEN decided.error::jsonb ELSE t.last_error END
    FROM decided
    WHERE t.id = decided.id AND decided.problem IS NULL
    RETURNING {_T_COLUMNS}, t.leased_at, t.leased_by, decided.result, decided.error
), kept AS (
    SELECT * FROM released AS r
    WHERE %(status)s::text <> 'done'
       OR r.namespace_id = ANY(ARRAY(
           SELECT id FROM namespaces_app_namespace WHERE history = 'all'))
), {
    _record_attempts(
        "kept", outcome=_RELEASE_OUTCOME, error="r.error::jsonb", result="r.result::jsonb"
    )
}, logged AS ({_LOG_THROUGHPUT.format(source="released")}
), freed AS (
    -- A lease ended in a namespace with max_in_flight frees a slot there:
    -- wake its waiting captures (sent at commit). Namespaces without the
    -- limit cost an empty probe of a partial index.
    SELECT pg_notify('{WORK_CHANNEL}', r.namespace_id)
    FROM (SELECT DISTINCT namespace_id FROM released) AS r
    WHERE r.namespace_id = ANY(ARRAY(
        SELECT id FROM namespaces_app_namespace WHERE max_in_flight IS NOT NULL))
)
{_fence_answer(TASK_COLUMNS.split(", "), "released", force="freed")}
"""


def release_params(
    ids: list[str],
    tokens: list[str] | None,
    status: str,
    *,
    scope: list[str] | None = None,
    results: list[str | None] | None = None,
    errors: list[str | None] | None = None,
    retry_after: int | None = None,
) -> dict[str, Any]:
    """RELEASE's parameters (`tokens` None: the seed's form; `results` and
    `errors` JSON text per id)."""
    return {
        "ids": ids,
        "tokens": tokens,
        "status": status,
        "scope": scope,
        "results": results,
        "errors": errors,
        "retry_after": retry_after,
    }


def extend_params(
    ids: list[str],
    tokens: list[str] | None,
    *,
    timeout: int | None = None,
    scope: list[str] | None = None,
) -> dict[str, Any]:
    """EXTEND's parameters. Its rows: as the fence answers, TASK_COLUMNS and lease_token."""
    return {
        "ids": ids,
        "tokens": tokens,
        "timeout": timeout,
        "scope": scope,
        "results": None,
        "errors": None,
    }


# Heartbeat: the leases of %(ids)s, fenced by %(tokens)s, now end
# %(timeout)s seconds from now (the task's own timeout when NULL). Status,
# retries, attempt and token stay; the expiry may move earlier as well as
# later. `available_at` keeps its distance from `lease_expires_at` (the
# backoff) while a retry is left, so capture and the sweeper see the new
# expiry at once.
_EXTENDED = f"{NOW} + make_interval(secs => coalesce(%(timeout)s::int, t.timeout))"
_EXTEND_DERIVED = derived(
    TaskStatus.IN_PROGRESS,
    "t.retries_left",
    expires=_EXTENDED,
    retry_at=f"{_EXTENDED} + (t.available_at - t.lease_expires_at)",
).assignments
EXTEND = f"""
{_FENCE}, extended AS (
    UPDATE tasks_app_task AS t
    SET updated_at = {NOW},
        {_EXTEND_DERIVED}
    FROM decided
    WHERE t.id = decided.id AND decided.problem IS NULL
    RETURNING {_T_COLUMNS}, t.lease_token::text AS lease_token
)
{_fence_answer([*TASK_COLUMNS.split(", "), "lease_token"], "extended")}
"""

# Register tasks, skipping ids that exist (the caller compares what came back
# with what it sent). A task registered in progress is leased from
# registration, as if captured then (attempt 0: it was never captured).
#
# INSERT_NEW_TASKS takes its rows from a relation `v` (id, namespace_id,
# timeout, retries_left, status, priority, payload as JSON text, available_at:
# the turn it was given, NULL for none; ts: its registration) and derives the
# lease columns for the state each task starts in; bulk import shares it.
_REGISTERED = derived(
    "v.status",
    "v.retries_left",
    queued="coalesce(v.available_at, v.ts)",
    expires="v.ts + make_interval(secs => v.timeout)",
)
INSERT_NEW_TASKS = f"""
INSERT INTO tasks_app_task
    (id, namespace_id, timeout, retries_left, status, priority, payload,
     created_at, updated_at, available_at, lease_expires_at, leased_at)
SELECT v.id, v.namespace_id, v.timeout, v.retries_left, v.status, v.priority,
       v.payload::jsonb, v.ts, v.ts,
       {_REGISTERED.available_at}, {_REGISTERED.lease_expires_at},
       CASE WHEN v.status = 'in_progress' THEN v.ts END
"""

# Rows are inserted in id order (the primary key's C collation), whatever
# order the caller gave: two registrations of overlapping ids in different
# orders would otherwise each hold an index entry the other waits for, a
# deadlock.
#
# FIFO still follows the caller's order, through the timestamps: row `ord` of
# `n` is stamped (n - ord) microseconds before the statement's clock, so a
# batch's timestamps increase strictly in the order given and none lies in
# the future. (Reading clock_timestamp() row by row instead would repeat
# within a microsecond, and a tie would let the ids decide.)
INSERT_IN_ID_ORDER = 'ORDER BY v.id COLLATE "C"'


def stamp(ord_: str, count: str) -> str:
    """The timestamp of row `ord_` of `count`, as described above."""
    return f"{NOW} - ({count} - {ord_}) * interval '1 microsecond'"


# A delay (%(delays)s, seconds) counts from the statement's clock; a task
# given neither a delay nor a time (%(availables)s) takes its turn at
# registration.
REGISTER = f"""
{INSERT_NEW_TASKS}
FROM (
    SELECT u.id, u.namespace_id, u.timeout, u.retries_left, u.status, u.priority,
           u.payload,
           coalesce(u.available_at, {NOW} + make_interval(secs => u.delay)) AS available_at,
           {stamp("u.ord", "cardinality(%(ids)s::text[])")} AS ts
    FROM unnest(%(ids)s::text[], %(namespace_ids)s::text[], %(timeouts)s::int[],
                %(retries)s::int[], %(statuses)s::text[], %(priorities)s::smallint[],
                %(payloads)s::text[], %(availables)s::timestamptz[], %(delays)s::float8[])
         WITH ORDINALITY
         AS u(id, namespace_id, timeout, retries_left, status, priority, payload,
              available_at, delay, ord)
) AS v
{INSERT_IN_ID_ORDER}
ON CONFLICT (id) DO NOTHING
RETURNING {TASK_COLUMNS}
"""


# Hold the namespaces a registration names until it commits, and read the
# defaults they give tasks. FOR KEY SHARE is the lock the foreign key itself
# takes: it does not block other registrations or captures, only a
# concurrent delete of the namespace.
LOCK_NAMESPACES = """
SELECT id, default_timeout, default_retries
FROM namespaces_app_namespace
WHERE id = ANY(%(ids)s)
FOR KEY SHARE
"""

# End up to %(batch)s expired leases: the task becomes failed, capturable again
# while it has retries left at the turn its capture set (the expiry plus the
# backoff), terminal otherwise; the attempt goes to the history as expired.
# No retry is charged here; the capture that picks the task up again pays
# for it, so one expiry is never charged twice.
#
# SKIP LOCKED: the sweep never waits on, or blocks, a capture or release in
# flight, and two overlapping sweeps split the expired rows between them. A
# release that committed first has moved the row out of `in_progress`, and
# the re-check on the row's latest version drops it from the batch.
RECLAIM_EXPIRED = f"""
WITH expired AS MATERIALIZED (
    SELECT id, lease_expires_at
    FROM tasks_app_task
    WHERE {CATEGORY["expired"].where()}
    ORDER BY lease_expires_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), reclaimed AS (
    UPDATE tasks_app_task AS t
    SET status = 'failed',
        updated_at = {NOW},
        {derived(TaskStatus.FAILED, "t.retries_left", queued=queued_at("expire")).assignments}
    FROM expired
    WHERE t.id = expired.id
    RETURNING t.id, t.namespace_id, t.status, t.retries_left, t.attempt, t.leased_at,
              t.leased_by, expired.lease_expires_at
), {_record_attempts("reclaimed", outcome="'expired'", ended_at="r.lease_expires_at")},
logged AS (
    INSERT INTO tasks_app_throughput (namespace_id, at, expired)
    SELECT namespace_id, {NOW}, count(*) FROM reclaimed GROUP BY namespace_id
)
SELECT retries_left > 0 FROM reclaimed
"""

# Delete up to %(batch)s done tasks of one namespace last updated before
# %(cutoff)s, oldest first (a range scan of `task_done_idx`). Batches keep
# each transaction, and the locks it holds, short. Their attempts go with
# them (ON DELETE CASCADE).
PURGE_DONE = """
WITH doomed AS MATERIALIZED (
    SELECT id
    FROM tasks_app_task
    WHERE namespace_id = %(namespace_id)s AND status = 'done' AND updated_at < %(cutoff)s
    ORDER BY updated_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM tasks_app_task AS t
USING doomed
WHERE t.id = doomed.id
"""


# An operator's purge: delete up to %(batch)s tasks of namespace
# %(namespace_id)s in one category (`purge(name)`), last changed before
# %(before)s when given. Batches keep each transaction, and the locks it
# holds, short; SKIP LOCKED passes over a task a release or an import is
# changing right now rather than wait for it. The category's condition is
# the one its partial index is built on, so each batch is a short range scan
# (done and failed-for-good tasks by `updated_at`, the rest from the capture
# and lease indexes). Attempts go with their tasks (ON DELETE CASCADE).
def purge(name: str) -> str:
    category = CATEGORY[name]
    turn = "available_at IS NOT NULL AND " if category.turn else ""
    return f"""
WITH doomed AS MATERIALIZED (
    SELECT id
    FROM tasks_app_task
    WHERE namespace_id = %(namespace_id)s AND {turn}{category.where()}
      AND (%(before)s::timestamptz IS NULL OR updated_at < %(before)s::timestamptz)
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM tasks_app_task AS t
USING doomed
WHERE t.id = doomed.id
"""


# The throughput log's upkeep, by the sweeper. Each statement moves rows
# from one form to another in one transaction, so a reader's snapshot sees
# every event counted exactly once (tasks_app.metrics sums both tables).
#
# The rows of each minute become one row per namespace and minute, stamped
# at the minute's start, once they are COMPACT_AFTER old: the log then holds
# a row per namespace and minute, plus the last few seconds' rows, however
# many statements wrote to it. The current and the previous minute are
# merged again at each run (their compacted row with the rows since); an
# older minute, already compacted, is left alone (a late commit into it
# makes a second row for it, which sums the same).
COMPACT_AFTER = "5 seconds"
COMPACT_THROUGHPUT = f"""
WITH gone AS (
    DELETE FROM tasks_app_throughput
    WHERE at < {NOW} - interval '{COMPACT_AFTER}'
      AND (at <> date_trunc('minute', at)
           OR at >= date_trunc('minute', {NOW}) - interval '1 minute')
    RETURNING namespace_id, at, captured, done, failed, expired
)
INSERT INTO tasks_app_throughput (namespace_id, at, captured, done, failed, expired)
SELECT namespace_id, date_trunc('minute', at),
       sum(captured), sum(done), sum(failed), sum(expired)
FROM gone
GROUP BY 1, 2
"""

# The dashboard charts the last hour; past a margin, rows go into the running
# totals of their namespace (the counters' base). Totals of namespaces that
# no longer exist go: a namespace created again under the same id starts
# from zero, which Prometheus reads as a counter reset.
FOLD_THROUGHPUT = f"""
WITH gone AS (
    DELETE FROM tasks_app_throughput
    WHERE at < {NOW} - interval '2 hours'
    RETURNING namespace_id, captured, done, failed, expired
), folded AS (
    INSERT INTO tasks_app_throughputtotal AS total
        (namespace_id, captured, done, failed, expired)
    SELECT namespace_id, sum(captured), sum(done), sum(failed), sum(expired)
    FROM gone
    WHERE namespace_id IN (SELECT id FROM namespaces_app_namespace)
    GROUP BY 1
    ON CONFLICT (namespace_id) DO UPDATE
    SET captured = total.captured + EXCLUDED.captured,
        done = total.done + EXCLUDED.done,
        failed = total.failed + EXCLUDED.failed,
        expired = total.expired + EXCLUDED.expired
)
DELETE FROM tasks_app_throughputtotal
WHERE namespace_id NOT IN (SELECT id FROM namespaces_app_namespace)
"""

# Every event since each namespace was created: the running totals plus the
# log's rows, read in one snapshot.
THROUGHPUT_TOTALS = """
SELECT namespace_id, sum(captured), sum(done), sum(failed), sum(expired)
FROM (
    SELECT namespace_id, captured, done, failed, expired
    FROM tasks_app_throughputtotal
    UNION ALL
    SELECT namespace_id, captured, done, failed, expired
    FROM tasks_app_throughput
) AS events
WHERE namespace_id IN (SELECT id FROM namespaces_app_namespace)
GROUP BY 1
"""

# `affected_total` runs over every run since the job first ran, whatever the
# namespaces did since (taskq_sweeper_reclaimed_total).
RECORD_RUN = """
INSERT INTO tasks_app_sweeprecord AS run (name, finished_at, affected, affected_total, detail)
VALUES (%s, clock_timestamp(), %s, %s, %s::jsonb)
ON CONFLICT (name) DO UPDATE
SET finished_at = EXCLUDED.finished_at, affected = EXCLUDED.affected,
    affected_total = run.affected_total + EXCLUDED.affected, detail = EXCLUDED.detail
"""

# Operator actions (admin): move the tasks of %(ids)s that satisfy a
# condition into a new state, locking them in id order like RELEASE, and
# re-checking the condition on each row's latest version once locked. `ts`
# is the statement's clock. A lease the action ends goes to the history as
# cancelled. Each returns the rows it changed.
_OPERATOR_ACTION = """
WITH target AS MATERIALIZED (
    SELECT id, status, attempt, leased_at, leased_by
    FROM tasks_app_task
    WHERE id = ANY(%(ids)s) AND ({condition})
    ORDER BY id
    FOR UPDATE
), changed AS (
    UPDATE tasks_app_task AS t
    SET {assignments}
    FROM target
    WHERE t.id = target.id
    RETURNING t.id, t.namespace_id, t.status
), ended AS (
    SELECT * FROM target WHERE status = 'in_progress'
), {record}, logged AS ({log})
SELECT id, namespace_id FROM changed
"""

# An operator ending a lease clears its token, so the holder's release or
# extend is refused as stale rather than taken for its own.
_FINISHED = f"lease_token = NULL, updated_at = {NOW}"


def _operator_action(name: str, *, retries: str = "t.retries_left", extra: str = "") -> str:
    transition = TRANSITIONS[name]
    assert transition.target is not None
    assignments = (
        f"status = '{transition.target}', {_FINISHED}{extra}, "
        + derived(transition.target, retries, queued=queued_at(name)).assignments
    )
    return _OPERATOR_ACTION.format(
        condition=any_of(transition.sources),
        assignments=assignments,
        record=_record_attempts("ended", outcome="'cancelled'").strip(),
        log=_LOG_THROUGHPUT.format(source="changed"),
    )


# Back to idle from done or failed, or a scheduled task's turn brought
# forward; %(retries)s, when not NULL, resets retries.
REQUEUE = _operator_action(
    "requeue",
    retries="COALESCE(%(retries)s, t.retries_left)",
    extra=", retries_left = COALESCE(%(retries)s, t.retries_left)",
)
# End a lease (valid or expired) and hand the task back, no retry charged.
CANCEL_LEASE = _operator_action("cancel_lease")
# Done for good; never over a valid lease (its worker may still be at it).
MARK_DONE = _operator_action("mark_done")
# Failed, as a worker's release would: retried while retries are left.
MARK_FAILED = _operator_action("mark_failed")

# Why the ids an operator action did not change were skipped.
DESCRIBE_SKIPPED = f"""
SELECT id, status, {CATEGORY["in_progress"].where()}
FROM tasks_app_task
WHERE id = ANY(%(ids)s)
"""

# Long polling (tasks_app.waiting): seconds until the next turn still to come
# in namespace %(namespace_id)s (a delayed task's, a lease's retry), NULL when
# none. One index probe per priority level, like CAPTURE's scans. A paused
# namespace has none: its waiters wait for the resume's notification.
NEXT_TURN = f"""
SELECT extract(epoch FROM least(
    (SELECT min(c.available_at)
     FROM generate_series({PRIORITIES[0]}, {PRIORITIES[-1]}) AS p(priority)
     CROSS JOIN LATERAL (
         SELECT available_at
         FROM tasks_app_task
         WHERE namespace_id = %(namespace_id)s
           AND priority = p.priority
           AND available_at > {NOW}
         ORDER BY available_at
         LIMIT 1
     ) AS c),
    -- With max_in_flight, each lease's expiry frees a slot too.
    (SELECT min(lease_expires_at)
     FROM tasks_app_task
     WHERE status = 'in_progress' AND lease_expires_at > {NOW}
       AND namespace_id = %(namespace_id)s
       AND EXISTS (SELECT FROM namespaces_app_namespace
                   WHERE id = %(namespace_id)s AND max_in_flight IS NOT NULL))
) - {NOW})
WHERE NOT EXISTS (
    SELECT FROM namespaces_app_namespace
    WHERE id = %(namespace_id)s AND paused_at IS NOT NULL
)
"""

# Wake the waiting captures of namespaces %(ids)s, on every server.
NOTIFY = """
SELECT pg_notify(%(channel)s, namespace_id) FROM unnest(%(ids)s::text[]) AS namespace_id
"""
