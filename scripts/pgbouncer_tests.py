"""Run the API tests through a real PgBouncer in transaction mode (`make test-pgbouncer`).

PgBouncer (Debian's package, `apt-get install pgbouncer`) listens on a free
local port in front of the database the settings name (the embedded server
when DATABASE_URL is unset), with `pool_mode = transaction`. The role's
timeouts are written straight to PostgreSQL first (`set_database_timeouts`),
then pytest runs with DATABASE_URL pointing at PgBouncer and
TASKQ_DB_POOLER=transaction.

The test database is created by pytest through PgBouncer and kept
(`--reuse-db`): PgBouncer holds server connections to it, so it is dropped
here, straight on PostgreSQL, before and after the run.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = BASE_DIR / "var" / "pgbouncer"
DATABASE = "taskq_pgbouncer"
TESTS = ["tests/api", "tests/test_database_settings.py"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upstream() -> dict[str, str]:
    """Where the configured database server is, as the settings name it."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskq_project.settings")
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()
    from django.db import connection

    from taskq_project.database_url import database_url

    connection.ensure_connection()
    settings = connection.settings_dict
    return {
        "host": settings["HOST"] or "localhost",
        "port": str(settings["PORT"] or 5432),
        "user": settings["USER"] or "postgres",
        "url": database_url(settings, name="postgres"),
    }


def drop_test_database(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS test_{DATABASE} WITH (FORCE)")


def main() -> int:
    pgbouncer = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(pgbouncer).exists():
        sys.exit("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    server = upstream()
    port = free_port()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "userlist.txt").write_text(f'"{server["user"]}" ""\n')
    (RUN_DIR / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server['host']} port={server['port']} user={server['user']}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {RUN_DIR / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        "max_client_conn = 500\n"
        "default_pool_size = 20\n"
        f"logfile = {RUN_DIR / 'pgbouncer.log'}\n"
        f"pidfile = {RUN_DIR / 'pgbouncer.pid'}\n"
    )
    # PgBouncer refuses to run as root; the embedded server's user will do.
    as_user = ["-u", "pgserver"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(RUN_DIR, "pgserver")
        for child in RUN_DIR.iterdir():
            shutil.chown(child, "pgserver")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    upstream_env = {**env, "DATABASE_URL": server["url"]}
    subprocess.run(
        [sys.executable, "manage.py", "set_database_timeouts"],
        cwd=BASE_DIR,
        env=upstream_env,
        check=True,
    )
    drop_test_database(server["url"])
    # -q: its log goes to var/pgbouncer/pgbouncer.log only, not over the test output.
    bouncer = subprocess.Popen([pgbouncer, "-q", *as_user, str(RUN_DIR / "pgbouncer.ini")])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if bouncer.poll() is not None or time.monotonic() > deadline:
                    sys.exit("pgbouncer did not start: see var/pgbouncer/pgbouncer.log")
                time.sleep(0.1)
        print(f"PgBouncer (transaction mode) on 127.0.0.1:{port}", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--reuse-db", *TESTS, *sys.argv[1:]],
            cwd=BASE_DIR,
            env={
                **env,
                "DATABASE_URL": f"postgres://{server['user']}@127.0.0.1:{port}/{DATABASE}",
                "TASKQ_DB_POOLER": "transaction",
            },
        )
        return result.returncode
    finally:
        bouncer.terminate()
        bouncer.wait(timeout=20)
        drop_test_database(server["url"])


if __name__ == "__main__":
    sys.exit(main())
