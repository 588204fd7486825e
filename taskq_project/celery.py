"""The Celery app: configured from Django settings (CELERY_*), tasks autodiscovered."""

import os
from pathlib import Path
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskq_project.settings")

app = Celery("taskq")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
@signals.beat_init.connect
def make_broker_folders(**kwargs: Any) -> None:
    """The filesystem broker's folders, made by the processes that use them.

    Not by the settings: importing them must write nothing.
    """
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        if options.get(key):
            Path(options[key]).mkdir(parents=True, exist_ok=True)
