from typing import Any

from django.core.management.base import BaseCommand
from django.db import connection

from taskq_project import db_settings


class Command(BaseCommand):
    help = (
        "Make the statement and idle-in-transaction timeouts (TASKQ_DB_*_TIMEOUT_MS) the "
        "defaults of the database role, for sessions a transaction-mode pooler opens."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        values = db_settings.set_role_defaults(connection)
        described = ", ".join(f"{name} = {ms} ms" for name, ms in values.items())
        self.stdout.write(f"Role {connection.settings_dict['USER']!r}: {described}.")
