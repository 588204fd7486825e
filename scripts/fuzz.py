"""`make fuzz`: schemathesis against a live server, held to the OpenAPI schema.

Creates a database of its own (the configured database's name with `_fuzz`
appended, on the configured server, so that runs against different databases
of one server never meet), migrates it, registers the data schemathesis draws
ids from (SEED_DATA) and an operator token, serves the API with gunicorn (as
`make run` does) on a free local port, and runs schemathesis with a fixed
seed. The server is always stopped, and the database dropped, however the run
ends. Exits with schemathesis's own exit code.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
# Every check schemathesis has. Where a refusal depends on the data rather
# than its shape, scripts/schemathesis.toml says which operations may answer
# 400 to a request the schema allows.
CHECKS = os.environ.get("FUZZ_CHECKS", "all")
EXCLUDED_CHECKS = os.environ.get("FUZZ_EXCLUDED_CHECKS", "")
CONFIG_FILE = BASE_DIR / "scripts" / "schemathesis.toml"
SEED = os.environ.get("FUZZ_SEED", "20261127")
MAX_EXAMPLES = os.environ.get("FUZZ_MAX_EXAMPLES", "40")


# What the server holds before the first request. scripts/schemathesis.toml
# draws ids from it (its dictionaries), so that requests reach tasks in every
# state: idle with payloads and priorities, leased, done with a result, failed
# with an error and captured again (an attempt history), and tasks that are
# there to be deleted. The namespaces the schema's examples name are
# registered too, so those examples are answered as for a real client.
SEED_DATA = """
from namespaces_app.services import Settings, register_namespace
from tasks_app.services import NewTask, Outcome, capture_tasks, register_tasks, release_tasks

register_namespace(namespace_id="fuzz", settings=Settings(history="all"))
for example in ("Images", "Reports"):
    register_namespace(namespace_id=example)
register_tasks(
    tasks=[
        NewTask(
            id=f"t{i:06d}",
            namespace_id="fuzz",
            priority=i % 10,
            payload={"n": i, "tags": ["fuzz"], "note": "a\u00e9\u4e2d"},
        )
        for i in range(50)
    ]
    + [NewTask(id=f"d{i:06d}", namespace_id="fuzz", priority=9) for i in range(10)]
)
# The ten tasks of priorities 0 and 1 (those scripts/schemathesis.toml names),
# leased: two then done, two failed and captured again, the rest still held.
leased = [row.id for row in capture_tasks(namespace_id="fuzz", limit=10, holder="fuzz")]
release_tasks(
    status="done",
    task_ids=leased[:2],
    outcomes={i: Outcome(result={"ok": i}) for i in leased[:2]},
)
release_tasks(
    status="failed",
    task_ids=leased[2:4],
    outcomes={i: Outcome(error={"type": "Timeout", "id": i}) for i in leased[2:4]},
)
capture_tasks(namespace_id="fuzz", limit=2, holder="fuzz")
"""


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskq_project.settings")
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()


def fuzz_database() -> str:
    from django.db import connection

    # Within PostgreSQL's 63 bytes, which would otherwise cut the name short.
    name = connection.settings_dict["NAME"].encode()[:58].decode(errors="ignore")
    return f"{name}_fuzz"


def fuzz_database_url() -> str:
    from django.db import connection

    from taskq_project.database_url import database_url

    return database_url(connection.settings_dict, name=fuzz_database())


def recreate_database(*, drop_only: bool = False) -> None:
    from django.db import connection

    name = connection.ops.quote_name(fuzz_database())
    with connection._nodb_cursor() as cursor:  # the server's maintenance database
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if not drop_only:
            cursor.execute(f"CREATE DATABASE {name}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the server exited before it answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer at {url}")


def main() -> int:
    django_setup()
    recreate_database()
    env = {
        **os.environ,
        "DATABASE_URL": fuzz_database_url(),
        # Fuzzing sends thousands of requests with one token.
        "TASKQ_THROTTLE_OPERATOR": "none",
        "TASKQ_DB_STATEMENT_TIMEOUT_MS": "0",
    }
    server = None
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "shell", "-c", SEED_DATA)
        token = manage(env, "create_api_token", "fuzz").strip().splitlines()[-1]
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "taskq_project/gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--access-logfile",
                "/dev/null",
            ],
            cwd=BASE_DIR,
            env=env,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/healthz", server)
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(CONFIG_FILE),
            "run",
            f"{base}/v1/schema",
            "--checks",
            CHECKS,
            *(["--exclude-checks", EXCLUDED_CHECKS] if EXCLUDED_CHECKS else []),
            "--seed",
            SEED,
            "--max-examples",
            MAX_EXAMPLES,
            "--header",
            f"Authorization: Bearer {token}",
            # One: generation in threads trips a race of this CPython's ast
            # module (SystemError: AST constructor recursion depth mismatch,
            # from Hypothesis describing a strategy), and a single thread
            # takes about as long against a server of two workers.
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--phases",
            "examples,coverage,fuzzing",
            "--suppress-health-check",
            "all",
        ]
        print(
            "running:",
            " ".join(c if "Bearer" not in c else "Authorization: Bearer ***" for c in command),
            flush=True,
        )
        return subprocess.call(command, cwd=BASE_DIR, env=env)
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        recreate_database(drop_only=True)


if __name__ == "__main__":
    sys.exit(main())
