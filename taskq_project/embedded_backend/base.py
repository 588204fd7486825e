"""Django's PostgreSQL backend, starting the embedded server when first needed.

Settings name this backend when DATABASE_URL is unset. Importing the settings
then starts nothing and writes nothing; the first connection a process makes
(a request, a management command, a Celery task, the test runner creating its
database) starts the embedded server under var/ if it is not running, and
fills in the Unix socket directory it listens on.
"""

from typing import Any

import dj_database_url
from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        if not self.settings_dict["HOST"]:
            from taskq_project.embedded_postgres import ensure_running

            # Kept in the settings, where subprocesses and tools that write a
            # DATABASE_URL back (taskq_project.database_url) read it.
            self.settings_dict["HOST"] = dj_database_url.parse(ensure_running())["HOST"]
        return super().get_connection_params()
