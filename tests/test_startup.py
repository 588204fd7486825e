"""What a process of the stack says when it starts, and the embedded database's commands."""

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from taskq_project import embedded_postgres
from tests.utils import subprocess_env

BASE_DIR = Path(settings.BASE_DIR)


def test_start_up_says_nothing_but_what_matters(db):
    env = subprocess_env()
    env.pop("CELERY_BROKER_URL", None)  # the filesystem broker of `make run`
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from taskq_project.celery import app; app.connection().info(); print('ready')",
        ],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ready" in result.stdout
    assert "AXES: BEGIN" not in output
    assert "No hostname was supplied" not in output


def test_db_stop_says_when_there_was_nothing_to_stop(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(embedded_postgres, "PGDATA", tmp_path / "pgdata")
    embedded_postgres.stop()
    assert "was not running" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


NO_SIDE_EFFECTS = """
import os, pathlib, sys
import taskq_project.embedded_postgres as embedded

def refuse(*args, **kwargs):
    raise SystemExit(f"side effect at settings import: {args!r}")

embedded.ensure_running = refuse
pathlib.Path.mkdir = refuse
real_open = os.open
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT
os.open = lambda path, flags, *rest: (
    refuse(path) if flags & WRITE else real_open(path, flags, *rest)
)
os.environ["DJANGO_SETTINGS_MODULE"] = "taskq_project.settings"
import django
django.setup()
from django.conf import settings
print(settings.DATABASES["default"]["ENGINE"])
"""


def test_importing_the_settings_starts_nothing_and_writes_nothing():
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DJANGO_SECRET_KEY"}}
    # The local secret key exists once any process of this checkout has run.
    assert (BASE_DIR / "var" / "secret_key").exists()
    result = subprocess.run(
        [sys.executable, "-c", NO_SIDE_EFFECTS],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "taskq_project.embedded_backend"


def test_a_deployment_without_database_url_refuses_to_start():
    from tests.test_production import env_example, run_manage

    env = env_example()
    env.pop("DATABASE_URL")
    result = run_manage("check", env=env)
    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr or "ImproperlyConfigured" in result.stderr


def test_manage_py_from_another_terminal_uses_the_embedded_database():
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DJANGO_SECRET_KEY"}}
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.db import connection; connection.ensure_connection(); "
            "print(connection.settings_dict['HOST'])",
        ],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(embedded_postgres.PGDATA)
