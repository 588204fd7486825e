"""`make cluster`: the multi-server layout of the README on one machine.

    python scripts/cluster.py run [--watch-parent]   # what `make cluster` execs
    python scripts/cluster.py stop                   # what `make cluster-stop` runs

Made of the standard engines, each from Debian's packages (installed when
missing, as CI installs Chromium):

- PostgreSQL: DATABASE_URL, or the embedded server under var/;
- PgBouncer in transaction mode in front of it, which the app servers and
  Celery connect through (TASKQ_DB_POOLER=transaction); long polling's
  LISTEN goes to PostgreSQL itself (TASKQ_LISTEN_DATABASE_URL), since a
  pooler in transaction mode would hand its session to others;
- TASKQ_CLUSTER_SERVERS app servers (3), gunicorn each, on ports PORT+1...;
- HAProxy on 127.0.0.1:PORT (8000) in front of them, checking /healthz
  every half second: a server that fails two checks is out, two good ones
  bring it back, and a request refused by a dead server is sent to another;
- the Celery worker and the one beat, on Redis: CELERY_BROKER_URL, else this
  machine's Redis on 127.0.0.1:6379, else a redis-server of the cluster's
  own; the same Redis (database 1) is the shared cache (TASKQ_CACHE_URL):
  throttling then counts across servers (the token cache is each process's
  own: a revocation reaches every one within TASKQ_TOKEN_CACHE_SECONDS).

Every process runs under scripts/supervisor.py with a Procfile written to
var/cluster/, so Ctrl-C or `make cluster-stop` stops all of them (its run
directory is var/cluster/run, apart from `make run`'s); a process that dies
is started again half a second later, as systemd would, with whatever it
forked killed first. PgBouncer, HAProxy and the app servers are separate processes, so
tests and the fault-injection run can kill and restart each one.

Only the standard library, but for `manage.py` and the embedded server,
which run in the virtualenv's Python (this one's). Run as root, PgBouncer
runs as another user (it refuses root), which must be able to reach
TASKQ_CLUSTER_DIR: not under a private (0700) directory of root's.
"""

import argparse
import getpass
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
CLUSTER_DIR = Path(os.environ.get("TASKQ_CLUSTER_DIR") or BASE_DIR / "var" / "cluster")
SUPERVISOR = BASE_DIR / "scripts" / "supervisor.py"
LOCAL_REDIS = ("127.0.0.1", 6379)
# Each app server's processes: two per server keeps three servers' worth on
# two cores (WEB_CONCURRENCY overrides it).
DEFAULT_WEB_CONCURRENCY = "2"

_apt_updated = False


def binary(name: str, package: str) -> str:
    """The path of `name`, installing Debian's `package` when it is missing."""
    global _apt_updated
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"cluster: {name} is not installed (Debian: apt-get install {package})")
    print(f"cluster: installing {package} (Debian's package)...", flush=True)
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        _apt_updated = True
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True
    )
    # A package's own service would take the ports and outlive the cluster.
    subprocess.run(["service", package, "stop"], capture_output=True, check=False)
    found = shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found:
        sys.exit(f"cluster: {package} installed no {name}")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def database_url() -> str:
    """PostgreSQL itself: DATABASE_URL, or the embedded server (started if need be)."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    sys.path.insert(0, str(BASE_DIR))
    from taskq_project.embedded_postgres import ensure_running

    return ensure_running()


def pgbouncer_config(upstream: str, port: int) -> tuple[Path, str]:
    """PgBouncer's configuration in front of `upstream`; returns it and the
    URL the app connects with."""
    url = urlsplit(upstream)
    host = unquote(url.hostname or "") if url.hostname else "localhost"
    # A socket directory, percent-encoded in the host part (embedded_postgres).
    if "%2F" in (url.netloc or "").upper():
        host = unquote(url.netloc.rpartition("@")[2].split(":")[0])
    user = unquote(url.username or getpass.getuser())
    dbname = url.path.lstrip("/") or user
    server = f"host={host} port={url.port or 5432} user={user}"
    if url.password:
        server += f" password={unquote(url.password)}"
    directory = CLUSTER_DIR / "pgbouncer"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = {server}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        "max_client_conn = 1000\n"
        # Server connections per database: the cores' worth and more, since
        # most statements wait on the disk or a lock, not a core.
        "default_pool_size = 20\n"
        # After a failed login to the server (PostgreSQL starting up again),
        # try again within a second, not PgBouncer's 15 s, in which it
        # refuses every client.
        "server_login_retry = 1\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
    )
    return config, f"postgres://{quote(user)}@127.0.0.1:{port}/{quote(dbname)}"


def pgbouncer_user() -> list[str]:
    """PgBouncer refuses to run as root: the embedded server's user, or Debian's."""
    if os.geteuid() != 0:
        return []
    for name in ("pgserver", "postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        for path in [CLUSTER_DIR / "pgbouncer", *(CLUSTER_DIR / "pgbouncer").iterdir()]:
            shutil.chown(path, name)
        return ["-u", name]
    sys.exit("cluster: no user to run PgBouncer as (it refuses root)")


def haproxy_config(port: int, servers: list[int]) -> Path:
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 60s",
        # A long poll waits up to 20 s for work.
        "    timeout server 60s",
        "    timeout http-keep-alive 30s",
        # A connection refused (a server just killed) is tried again on
        # another server; a request that reached a server is never sent twice.
        "    retries 2",
        "    option redispatch 1",
        "    retry-on conn-failure",
        "frontend taskq",
        f"    bind 127.0.0.1:{port}",
        "    option forwardfor",
        "    default_backend app",
        # No server to answer (the database down, so every /healthz fails):
        # the API's own 503, JSON with Retry-After, not HAProxy's HTML page;
        # likewise a server that died with the request (502) or a timeout.
        *(
            f"    http-error status {code} content-type application/json"
            f' string \'{{"detail": "{detail}", "code": "{name}"}}\''
            f" hdr Retry-After {wait}"
            for code, name, detail, wait in (
                (502, "bad_gateway", "The server went away with the request; retry.", 1),
                (503, "unavailable", "No server is available; retry shortly.", 5),
                (504, "gateway_timeout", "The server did not answer in time; retry.", 1),
            )
        ),
        "backend app",
        # Long polls hold their connections: send new ones where fewest are.
        "    balance leastconn",
        "    option httpchk GET /healthz",
        "    http-check expect status 200",
        # Out after two failed checks, or at once on a refused connection
        # (a server just killed, or restarting), so that it gets no request
        # before it can answer; back after two good checks.
        "    default-server inter 500ms fastinter 100ms fall 2 rise 2"
        " observe layer4 error-limit 1 on-error mark-down",
        *(f"    server app{n} 127.0.0.1:{p} check" for n, p in enumerate(servers, 1)),
    ]
    config = CLUSTER_DIR / "haproxy.cfg"
    config.write_text("\n".join(lines) + "\n")
    return config


def broker() -> tuple[str, str, list[str] | None]:
    """(broker URL, cache URL, a redis-server command when the cluster runs its own)."""
    given = os.environ.get("CELERY_BROKER_URL")
    cache = os.environ.get("TASKQ_CACHE_URL")
    if given and (cache or given.startswith("redis")):
        return given, cache or _database_of(given, 1), None
    if listening(*LOCAL_REDIS):
        local = f"redis://{LOCAL_REDIS[0]}:{LOCAL_REDIS[1]}"
        return given or f"{local}/0", cache or f"{local}/1", None
    port = free_port()
    command = [
        binary("redis-server", "redis-server"),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(CLUSTER_DIR),
    ]
    return given or f"redis://127.0.0.1:{port}/0", cache or f"redis://127.0.0.1:{port}/1", command


def _database_of(url: str, number: int) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{number}").geturl()


def procfile(
    *, pgbouncer: list[str], haproxy: list[str], redis: list[str] | None, servers: list[int]
) -> Path:
    lines = [
        "# Written by scripts/cluster.py for `make cluster`; run by scripts/supervisor.py.",
        f"pgbouncer: {subprocess.list2cmdline(pgbouncer)}",
        f"haproxy: {subprocess.list2cmdline(haproxy)}",
    ]
    if redis is not None:
        lines.append(f"redis: {subprocess.list2cmdline(redis)}")
    for n, port in enumerate(servers, 1):
        metrics = CLUSTER_DIR / "metrics" / f"app{n}"
        lines.append(
            f"app{n}: env GUNICORN_BIND=127.0.0.1:{port} PROMETHEUS_MULTIPROC_DIR={metrics}"
            " gunicorn -c taskq_project/gunicorn.conf.py"
        )
    lines += [
        "worker: celery -A taskq_project worker --pool threads --concurrency 2"
        " --without-mingle --without-gossip --loglevel INFO",
        "beat: celery -A taskq_project beat --schedule $TASKQ_RUN_DIR/celerybeat-schedule"
        " --loglevel INFO",
    ]
    path = CLUSTER_DIR / "Procfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*, watch_parent: bool) -> int:
    port = int(os.environ.get("PORT", "8000"))
    count = int(os.environ.get("TASKQ_CLUSTER_SERVERS", "3"))
    if count < 1:
        sys.exit("cluster: TASKQ_CLUSTER_SERVERS must be at least 1")
    CLUSTER_DIR.mkdir(parents=True, exist_ok=True)
    pgbouncer = binary("pgbouncer", "pgbouncer")
    haproxy = binary("haproxy", "haproxy")
    upstream = database_url()
    bouncer_port = int(os.environ.get("TASKQ_CLUSTER_PGBOUNCER_PORT") or free_port())
    bouncer_config, through_bouncer = pgbouncer_config(upstream, bouncer_port)
    servers = [port + n for n in range(1, count + 1)]
    broker_url, cache_url, redis = broker()
    # The role's timeouts, which PgBouncer cannot pass on as startup options
    # (README, "PgBouncer"), written to PostgreSQL itself.
    subprocess.run(
        [sys.executable, "manage.py", "set_database_timeouts"],
        cwd=BASE_DIR,
        env={**os.environ, "DATABASE_URL": upstream},
        check=True,
    )
    path = procfile(
        pgbouncer=[pgbouncer, "-q", *pgbouncer_user(), str(bouncer_config)],
        haproxy=[haproxy, "-db", "-f", str(haproxy_config(port, servers))],
        redis=redis,
        servers=servers,
    )
    env = {
        **os.environ,
        "DATABASE_URL": through_bouncer,
        "TASKQ_DB_POOLER": "transaction",
        "TASKQ_LISTEN_DATABASE_URL": upstream,
        "CELERY_BROKER_URL": broker_url,
        "TASKQ_CACHE_URL": cache_url,
        "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", DEFAULT_WEB_CONCURRENCY),
        "TASKQ_PROCFILE": str(path),
        # A killed server, pooler or balancer comes back, as under systemd.
        "TASKQ_SUPERVISOR_RESTART": "1",
        # HAProxy's checks, twice a second per server, would fill it.
        "GUNICORN_ACCESS_LOG": os.environ.get("GUNICORN_ACCESS_LOG", "/dev/null"),
        "TASKQ_RUN_DIR": str(CLUSTER_DIR / "run"),
    }
    print(
        f"\ntaskq cluster is starting on http://127.0.0.1:{port}/ (HAProxy), with\n"
        f"  {count} app servers on ports {', '.join(map(str, servers))}\n"
        f"  PgBouncer (transaction mode) on 127.0.0.1:{bouncer_port}\n"
        f"  Celery worker and beat on {broker_url}; cache {cache_url}\n"
        "  Stop: Ctrl-C, or `make cluster-stop` from another terminal\n",
        flush=True,
    )
    argv = [sys.executable, str(SUPERVISOR), "run", *(["--watch-parent"] if watch_parent else [])]
    os.execve(sys.executable, argv, env)


def stop() -> int:
    env = {**os.environ, "TASKQ_RUN_DIR": str(CLUSTER_DIR / "run")}
    return subprocess.run([sys.executable, str(SUPERVISOR), "stop"], env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="start the cluster in the foreground")
    run_parser.add_argument(
        "--watch-parent", action="store_true", help="stop when the parent (make) goes"
    )
    commands.add_parser("stop", help="stop the cluster started from this checkout")
    args = parser.parse_args()
    if args.command == "run":
        return run(watch_parent=args.watch_parent)
    return stop()


if __name__ == "__main__":
    sys.exit(main())
