from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig
from django.db.backends.signals import connection_created


class TaskqAdminConfig(AdminConfig):
    default_site = "taskq_project.admin_site.TaskqAdminSite"


class TaskqConfig(AppConfig):
    """The project's own start-up: what every database connection gets."""

    name = "taskq_project"
    verbose_name = "taskq"

    def ready(self) -> None:
        from taskq_project import db_settings, stale_plans

        connection_created.connect(stale_plans.install, dispatch_uid="taskq-stale-plans")
        connection_created.connect(db_settings.check_on_connect, dispatch_uid="taskq-timeouts")
