"""Helpers for tests that run the product in subprocesses."""

import os
from urllib.parse import quote

from django.db import connection


def database_url_of_test_database() -> str:
    """A DATABASE_URL for the database this test run uses (for subprocesses)."""
    db = connection.settings_dict
    user = quote(db["USER"] or "", safe="")
    password = quote(db["PASSWORD"] or "", safe="")
    # A Unix socket directory is percent-encoded into the host part.
    host = quote(db["HOST"] or "", safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    name = quote(db["NAME"], safe="")
    return f"postgresql://{user}:{password}@{host}{port}/{name}"


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url_of_test_database(), **extra}
