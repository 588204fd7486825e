"""The lease clock under a test's control: frozen, and moved, without sleeping.

Every lease decision reads one clock (tasks_app.lease.NOW), which a session
may freeze with the `taskq.frozen_at` setting. Tests freeze the
connection they and the in-process API share, so expiry is tested at its
exact boundary, to the microsecond.
"""

from datetime import datetime, timedelta

from django.db import connection

from tasks_app.lease import NOW


class Clock:
    def now(self) -> datetime:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {NOW}")
            row = cursor.fetchone()
        assert row is not None
        return row[0]

    def freeze(self, at: datetime | None = None) -> datetime:
        """Stop the clock at `at` (default: now); returns where it stands."""
        at = self.now() if at is None else at
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('taskq.frozen_at', %s, false)", [at.isoformat()])
        return at

    def advance(self, seconds: float = 0, *, microseconds: int = 0) -> datetime:
        return self.freeze(self.now() + timedelta(seconds=seconds, microseconds=microseconds))

    def thaw(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("RESET taskq.frozen_at")
