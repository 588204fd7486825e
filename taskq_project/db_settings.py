"""The session timeouts, where a transaction-mode pooler cannot carry them.

Without a pooler the timeouts travel as startup options of every connection.
PgBouncer in transaction mode refuses startup options, and a `SET` would
only reach whichever server session ran it. What every session the pooler
opens does get is the role's defaults (`ALTER ROLE ... SET`), applied by
PostgreSQL when the session starts: `set_database_timeouts` writes them.
"""

import logging
from typing import Any

from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper

log = logging.getLogger(__name__)

# PostgreSQL setting name -> the milliseconds settings ask for.
TIMEOUTS = {
    "statement_timeout": "TASKQ_DB_STATEMENT_TIMEOUT_MS",
    "idle_in_transaction_session_timeout": "TASKQ_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
}


def wanted() -> dict[str, int]:
    return {name: int(getattr(settings, setting)) for name, setting in TIMEOUTS.items()}


def set_role_defaults(connection: BaseDatabaseWrapper) -> dict[str, int]:
    """Make the timeouts the defaults of the role this connection logs in as.

    They apply to the sessions that start afterwards, in every database.
    """
    values = wanted()
    with connection.cursor() as cursor:
        for name, milliseconds in values.items():
            # A GUC value cannot be a bind parameter; it is an int from settings.
            cursor.execute(f"ALTER ROLE CURRENT_USER SET {name} = {int(milliseconds)}")
    return values


def current(connection: BaseDatabaseWrapper) -> dict[str, int]:
    """The timeouts this connection's session runs with, in milliseconds."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, setting::int FROM pg_settings WHERE name = ANY(%s)", [list(TIMEOUTS)]
        )
        return dict(cursor.fetchall())


def check_on_connect(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """`connection_created` receiver behind a transaction pooler: say when they do not hold."""
    if settings.TASKQ_DB_POOLER != "transaction":
        return
    found = current(connection)
    missing = {name: ms for name, ms in wanted().items() if found.get(name) != ms}
    if missing:
        log.error(
            "behind the pooler the database session runs with %s instead of %s: "
            "run `manage.py set_database_timeouts` against the database (not through the pooler)",
            {name: found.get(name) for name in missing},
            missing,
        )
