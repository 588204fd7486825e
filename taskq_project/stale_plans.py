"""Recovering from prepared statements that a migration made stale.

The web processes prepare their hot statements (capture, release: psycopg's
server-side prepared statements). A migration that changes the type of a
column those statements return makes PostgreSQL refuse every later execution
of them on that connection with "cached plan must not change result type",
until the connection closes: during a rolling deploy every old connection
would answer 500s for up to DATABASE_CONN_MAX_AGE. Instead, the connection
drops its prepared statements (DEALLOCATE ALL, which psycopg also clears
from its own cache) and runs the statement again, once: the statement
failed without doing anything, so running it again is safe.

Inside a transaction the failure has aborted it, so nothing can be run
again there: the error propagates (the API answers 503, retry at once), and
the statements are dropped before the connection's next statement.
"""

from collections.abc import Callable
from typing import Any

from django.db import utils as db
from django.db.backends.base.base import BaseDatabaseWrapper

STALE_PLAN = "cached plan must not change result type"


def is_stale_plan(exc: BaseException) -> bool:
    cause = exc.__cause__
    return (
        isinstance(exc, db.NotSupportedError)
        and getattr(cause, "sqlstate", None) == "0A000"
        and STALE_PLAN in str(cause)
    )


def recover_from_stale_plans(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    connection: BaseDatabaseWrapper = context["connection"]
    if getattr(connection, "taskq_stale_plans", False) and not connection.in_atomic_block:
        _deallocate(connection)
    try:
        return execute(sql, params, many, context)
    except db.NotSupportedError as exc:
        if not is_stale_plan(exc):
            raise
        if connection.in_atomic_block:
            connection.taskq_stale_plans = True  # type: ignore[attr-defined]
            raise
        _deallocate(connection)
        return execute(sql, params, many, context)


def _deallocate(connection: BaseDatabaseWrapper) -> None:
    connection.taskq_stale_plans = False  # type: ignore[attr-defined]
    connection.connection.execute("DEALLOCATE ALL")


def install(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """`connection_created` receiver: every new connection recovers on its own."""
    if recover_from_stale_plans not in connection.execute_wrappers:
        connection.execute_wrappers.append(recover_from_stale_plans)
