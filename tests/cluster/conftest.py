"""One cluster for the session, on the test database.

`scripts/cluster.py run` as `make cluster` runs it, in a directory and on
ports of its own (a cluster on the default port may be running beside it),
stopped at the end with `scripts/cluster.py stop`, which must leave no
process of the stack behind. The tests are `transaction=True`: the servers
only see committed rows. The flush between tests empties the tables; the
cluster's processes run on across tests.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection
from pytest_django import DjangoDbBlocker

from apikeys_app.models import ApiToken
from tests.cluster.stack import (
    BASE_DIR,
    READ_ONLY_REQUESTS_PER_HOUR,
    SERVERS,
    TOKEN_CACHE_SECONDS,
    WEB_CONCURRENCY,
    WORKER_RATE,
    Cluster,
    free_base_port,
    load_supervisor,
    wait_for,
)
from tests.utils import database_url_of_test_database

# Three gunicorns, Celery and beat importing Django on a loaded two-core
# machine; about 5 s on an idle one.
STARTUP_SECONDS = 90
# The supervisor's own bound on a stop is 10 s (GRACE_SECONDS and more).
STOP_SECONDS = 30


@pytest.fixture(scope="session")
def cluster(django_db_setup: None, django_db_blocker: DjangoDbBlocker) -> Iterator[Cluster]:
    with django_db_blocker.unblock():
        database = database_url_of_test_database()
        _number_tokens_apart()
    # Not under pytest's tmp_path: its parents are private to root, and
    # PgBouncer, which refuses to run as root, reads its files from here.
    directory = Path(tempfile.mkdtemp(prefix="taskq-cluster-"))
    directory.chmod(0o755)
    port = free_base_port(SERVERS + 1)
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "TASKQ_CLUSTER_DIR": str(directory),
        "PORT": str(port),
        "TASKQ_CLUSTER_SERVERS": str(SERVERS),
        "WEB_CONCURRENCY": str(WEB_CONCURRENCY),
        "TASKQ_THROTTLE_READ_ONLY": f"{READ_ONLY_REQUESTS_PER_HOUR}/hour",
        "TASKQ_THROTTLE_WORKER": WORKER_RATE,
        "TASKQ_TOKEN_CACHE_SECONDS": str(TOKEN_CACHE_SECONDS),
    }
    log = directory / "cluster.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "scripts/cluster.py", "run"],
            cwd=BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    stack = Cluster(
        directory=directory,
        port=port,
        servers={f"app{n}": port + n for n in range(1, SERVERS + 1)},
        env=env,
        process=process,
        log=log,
    )
    try:
        try:
            wait_for(
                lambda: process.poll() is not None or stack.is_whole(),
                STARTUP_SECONDS,
                "the cluster answers /healthz through HAProxy and on every server",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.log_tail()}") from None
        if process.poll() is not None:
            raise AssertionError(
                f"the cluster exited with {process.returncode}\n{stack.log_tail()}"
            )
        yield stack
    finally:
        _stop(stack)
    shutil.rmtree(directory, ignore_errors=True)


def _number_tokens_apart() -> None:
    """Start the test database's token ids at a random point.

    The throttle counts per token id in the shared cache, which is database 1
    of this machine's Redis, shared with any other cluster running here. A new
    test database numbers its tokens from 1 again, and token 1 of a neighbour
    (or of the previous run, within the hour) would count against ours.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
            [ApiToken._meta.db_table, random.randrange(10**12, 10**15)],
        )


def _stop(stack: Cluster) -> None:
    supervisor = load_supervisor()
    try:
        stack_id = stack.state()["stack_id"]
    except (OSError, ValueError, KeyError):
        stack_id = None  # the supervisor never got as far as writing it
    stopped = subprocess.run(
        [sys.executable, "scripts/cluster.py", "stop"],
        cwd=BASE_DIR,
        env=stack.env,
        capture_output=True,
        timeout=STOP_SECONDS,
    )
    try:
        code = stack.process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        stack.process.kill()
        code = stack.process.wait()
    left = supervisor.stack_members(stack_id) if stack_id else []
    for pid in left:  # ours: they hold the stack's id
        os.kill(pid, signal.SIGKILL)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert code == 0, stack.log_tail()
    assert left == [], f"left running after the stop: {left}\n{stack.log_tail()}"


@pytest.fixture(autouse=True)
def whole_cluster(cluster: Cluster) -> Cluster:
    """Each test starts with every server up (a test before may have killed one)."""
    wait_for(cluster.is_whole, 30, "every server answers /healthz")
    return cluster
