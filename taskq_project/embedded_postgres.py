"""The embedded PostgreSQL used when no DATABASE_URL is configured.

`pgserver` ships real PostgreSQL binaries in its wheel, so a machine with only
Python can run the product and its tests against the same database engine as
production. The server lives under `var/pgdata`, listens on a Unix socket only,
and outlives the process that started it: `make run`, a management command in
another terminal and the test suite all share it. `python -m
taskq_project.embedded_postgres stop` shuts it down.
"""

import re
import sys
import warnings
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
PGDATA = BASE_DIR / "var" / "pgdata"

# Server parameters the embedded cluster runs with, beyond PostgreSQL's
# defaults; each takes effect on a reload. The README recommends the same for
# a production server.
SERVER_SETTINGS = {
    # The task table is a queue table: its own thresholds (tasks_app migration
    # 0006) make it due for a vacuum after about 1% of churn, but autovacuum
    # only looks at each database once per naptime. At the default minute, a
    # busy namespace's capture walks up to a minute's worth of dead index
    # entries at the head of its queue (docs/benchmarks.md, lease sweeper).
    "autovacuum_naptime": "10s",
}


def ensure_running() -> str:
    """Start the embedded server if it is not running; return its URL."""
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its
    # fallback under /tmp is what pgserver uses for its lock, which is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        PGDATA.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server must outlive this process so that every
        # process of the stack (web, worker, commands, tests) shares one cluster.
        server = pgserver.get_server(PGDATA, cleanup_mode=None)
        uri = urlsplit(server.get_uri())
    # pgserver names its Unix socket directory in a `host=` query parameter;
    # put it in the host part instead, percent-encoded, so that Django's HOST
    # holds it and every consumer of DATABASE_URL reads the same thing.
    socket_dir = parse_qs(uri.query)["host"][0]
    if _pending_settings():
        _apply_settings(host=socket_dir, user=uri.username or "postgres", dbname=uri.path[1:])
    return f"postgresql://{uri.username}@{quote(socket_dir, safe='')}{uri.path}"


def _pending_settings() -> dict[str, str]:
    """The SERVER_SETTINGS that postgresql.auto.conf does not hold yet.

    Read from the file ALTER SYSTEM writes, so that the processes starting
    after the first (every command, worker and test run) need no connection.
    """
    try:
        text = (PGDATA / "postgresql.auto.conf").read_text()
    except FileNotFoundError:
        text = ""
    current = dict(re.findall(r"^(\w+) = '([^']*)'$", text, flags=re.MULTILINE))
    return {name: value for name, value in SERVER_SETTINGS.items() if current.get(name) != value}


def _apply_settings(*, host: str, user: str, dbname: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=host, user=user, dbname=dbname, autocommit=True) as conn:
        for name, value in _pending_settings().items():
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        conn.execute("SELECT pg_reload_conf()")


def stop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import pg_ctl  # type: ignore[attr-defined]

        if (PGDATA / "postmaster.pid").exists():
            import os

            user = "pgserver" if os.geteuid() == 0 else None
            pg_ctl(["-w", "stop"], pgdata=PGDATA, user=user)
            print(f"Stopped the embedded PostgreSQL ({PGDATA}).")
        else:
            print(f"The embedded PostgreSQL ({PGDATA}) was not running.")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    if command == "start":
        print(ensure_running())
    elif command == "stop":
        stop()
    else:
        sys.exit(f"usage: {sys.argv[0]} [start|stop]")
