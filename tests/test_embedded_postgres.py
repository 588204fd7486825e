"""The embedded PostgreSQL of `make run` and `make test`."""

import dj_database_url
import psycopg
from psycopg import sql

from taskq_project.embedded_postgres import SERVER_SETTINGS, ensure_running


def test_the_embedded_server_runs_with_the_products_server_settings():
    params = dj_database_url.parse(ensure_running())
    with psycopg.connect(host=params["HOST"], user=params["USER"], dbname=params["NAME"]) as conn:
        for name, value in SERVER_SETTINGS.items():
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            assert row == (value,), name
