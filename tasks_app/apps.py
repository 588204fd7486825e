from typing import Any

from django.apps import AppConfig
from django.core import checks


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Tasks"

    def ready(self) -> None:
        checks.register(check_listen_database)


def check_listen_database(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Behind a pooler in transaction mode, long polling needs a direct session.

    The pooler hands the session that ran LISTEN to other clients, so its
    notifications are lost: waiters would wake only by their timers.
    """
    from django.conf import settings

    if settings.TASKQ_DB_POOLER == "transaction" and not settings.TASKQ_LISTEN_DATABASE:
        return [
            checks.Warning(
                "TASKQ_DB_POOLER=transaction without TASKQ_LISTEN_DATABASE_URL: long polling"
                " would LISTEN through the pooler, which loses its notifications, so waiting"
                " captures would wake late (up to 5 s after new work).",
                hint="Set TASKQ_LISTEN_DATABASE_URL to PostgreSQL itself, not the pooler.",
                id="taskq.W001",
            )
        ]
    return []
