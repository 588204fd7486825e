"""Helpers for tests that run the product in subprocesses."""

import os

from django.db import connection

from taskq_project.database_url import database_url


def database_url_of_test_database() -> str:
    """A DATABASE_URL for the database this test run uses (for subprocesses)."""
    return database_url(connection.settings_dict)


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url_of_test_database(), **extra}
