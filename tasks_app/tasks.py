"""Celery tasks: thin callers of `tasks_app.sweeper`."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from tasks_app import sweeper


@shared_task(name="tasks_app.reclaim_expired_leases", ignore_result=True)
def reclaim_expired_leases() -> int:
    return sweeper.reclaim_expired_leases().reclaimed


@shared_task(name="tasks_app.purge_done_tasks", ignore_result=True)
def purge_done_tasks() -> int:
    days = settings.TASKQ_DONE_RETENTION_DAYS
    if days is None:
        return 0
    return sweeper.purge_done_tasks(older_than=timedelta(days=days))
