"""Which database errors are transient, and what a client should do about them.

A transient error is one the same request may not meet a moment later: the
server is restarting or unreachable, a failover left us on a read-only
standby, a deadlock or serialization conflict rolled the transaction back,
a lock or statement timeout fired. The API answers those with 503 and
`Retry-After` instead of 500, so workers back off and retry rather than treat
the service as broken. Anything else is a bug and stays a 500.
"""

from dataclasses import dataclass

from django.db import utils as db


@dataclass(frozen=True)
class Transient:
    code: str
    detail: str
    retry_after: int  # seconds


UNAVAILABLE = Transient(
    "database_unavailable", "The database is unavailable; retry shortly.", retry_after=5
)
CONFLICT = Transient(
    "database_conflict",
    "The transaction met a concurrent one (deadlock or serialization failure) and "
    "was rolled back; nothing changed. Retry.",
    retry_after=1,
)
TIMEOUT = Transient(
    "database_timeout",
    "The database did not finish in time (statement or lock timeout); nothing changed. Retry.",
    retry_after=2,
)
READ_ONLY = Transient(
    "database_read_only",
    "The database is read-only (a failover may be under way); nothing changed. Retry.",
    retry_after=5,
)

# By SQLSTATE, exact codes first, then their class (the first two characters).
_BY_SQLSTATE = {
    "40001": CONFLICT,  # serialization_failure
    "40P01": CONFLICT,  # deadlock_detected
    "55P03": TIMEOUT,  # lock_not_available (lock_timeout)
    "57014": TIMEOUT,  # query_canceled (statement_timeout)
    "25006": READ_ONLY,  # read_only_sql_transaction
}
_BY_CLASS = {
    "08": UNAVAILABLE,  # connection exception
    "40": CONFLICT,  # transaction rollback
    "53": UNAVAILABLE,  # insufficient resources (too many connections, ...)
    "57": UNAVAILABLE,  # operator intervention (admin shutdown, cannot connect now)
    "58": UNAVAILABLE,  # system error (I/O error)
}


def transient(exc: BaseException | None) -> Transient | None:
    """The kind of transient database error `exc` is, or None if it is not one."""
    if not isinstance(exc, db.Error):
        return None
    from taskq_project.stale_plans import is_stale_plan

    if is_stale_plan(exc):
        # A migration changed a prepared statement's result type while a
        # transaction ran it; the connection drops its prepared statements
        # before its next one (taskq_project.stale_plans).
        return CONFLICT
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    if sqlstate:
        return _BY_SQLSTATE.get(sqlstate) or _BY_CLASS.get(sqlstate[:2])
    # No SQLSTATE: the client library's own failure to reach the server
    # (connection refused or lost, connect timeout).
    if isinstance(exc, db.OperationalError | db.InterfaceError):
        return UNAVAILABLE
    return None
