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


def socket_directory() -> str:
    """Start the embedded server if need be; the directory of its Unix socket."""
    from taskq_project.embedded_postgres import ensure_running

    return str(dj_database_url.parse(ensure_running())["HOST"])


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        if not self.settings_dict["HOST"]:
            self.settings_dict["HOST"] = socket_directory()
        return super().get_connection_params()
