"""The embedded PostgreSQL used when no DATABASE_URL is configured.

`pgserver` ships real PostgreSQL binaries in its wheel, so a machine with only
Python can run the product and its tests against the same database engine as
production. The server lives under `var/pgdata`, listens on a Unix socket only,
and outlives the process that started it: `make run`, a management command in
another terminal and the test suite all share it. `python -m
taskq_project.embedded_postgres stop` shuts it down.
"""

import sys
import warnings
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
PGDATA = BASE_DIR / "var" / "pgdata"


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
    return f"postgresql://{uri.username}@{quote(socket_dir, safe='')}{uri.path}"


def stop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import pg_ctl  # type: ignore[attr-defined]

        if (PGDATA / "postmaster.pid").exists():
            import os

            user = "pgserver" if os.geteuid() == 0 else None
            pg_ctl(["-w", "stop"], pgdata=PGDATA, user=user)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    if command == "start":
        print(ensure_running())
    elif command == "stop":
        stop()
    else:
        sys.exit(f"usage: {sys.argv[0]} [start|stop]")
