"""Long polling across servers: a waiter on app1, the registration through app2.

Each web process LISTENs on PostgreSQL itself (TASKQ_LISTEN_DATABASE_URL)
while the registration's NOTIFY goes through PgBouncer with its
transaction: only PostgreSQL carries the wake from one server to another.
The waiter's tries are counted in the shared cache (each try of a waiting
capture counts against its token's rate, README "Long polling"), which is
how the test knows the registration came after the waiter's first try: a
task registered before it would be leased by that try, woken or not.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache.backends.redis import RedisCache
from django.db import connection

from apikeys_app.models import ApiToken
from apikeys_app.services import create_token
from apikeys_app.throttling import parse_rate
from tasks_app.waiting import CHANNEL
from tests.cluster.stack import (
    SERVERS,
    WEB_CONCURRENCY,
    WORKER_RATE,
    Answer,
    Cluster,
    request,
    wait_for,
)
from tests.factories import make_namespace

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


class Waiting:
    """A capture with `wait` on a thread: its answer, and when it came."""

    def __init__(self, port: int, token: str, *, namespace: str, wait: int) -> None:
        self.answer: Answer | None = None
        self.started = time.monotonic()
        self.answered = 0.0
        path = f"/v1/task/capture?namespace_id={namespace}&limit=1&wait={wait}"

        def run() -> None:
            self.answer = request(port, "POST", path, token=token, timeout=wait + 10)
            self.answered = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def leased(self) -> list[str]:
        self.thread.join(timeout=40)
        assert self.answer is not None, "the waiting capture got no answer"
        assert self.answer.status == 200, self.answer
        return [task["id"] for task in self.answer.json()["list"]]


class Tries:
    """How many requests a token has made, as the throttle counts them in the
    shared cache (apikeys_app/throttling.py: one fixed-window counter per token)."""

    def __init__(self, cluster: Cluster, token: ApiToken) -> None:
        limit = parse_rate(WORKER_RATE)
        assert limit is not None and token.role == "worker"
        self.period = limit[1]
        self.key = f"taskq:throttle:{token.pk}:{self.period}"
        self.first_window = int(time.time() // self.period)
        self.cache = RedisCache(cluster.cache_url, {})

    def count(self) -> int:
        last_window = int(time.time() // self.period)
        windows = range(self.first_window, last_window + 1)
        return sum(int(self.cache.get(f"{self.key}:{window}") or 0) for window in windows)

    def wait_beyond(self, made: int, what: str) -> None:
        wait_for(lambda: self.count() > made, 10, what)


def listening_processes() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'taskq-listen' AND query = %s",
            [f"LISTEN {CHANNEL}"],
        )
        (count,) = cursor.fetchone()
    return int(count)


@pytest.fixture
def everyone_listens(cluster: Cluster) -> None:
    """Every web process of every server listens.

    A process starts listening with its first waiting capture, and then wakes
    all its waiters once (nothing was heard while it did not listen): a
    waiter of a process new to waiting gets a second try of its own, which
    could lease a task without any wake. Waiting captures of an unknown
    namespace (404 at once) reach the processes, several at a time on each
    server, until all of them listen.
    """
    _, secret = create_token(name="warm-up", role="worker")
    path = "/v1/task/capture?namespace_id=nowhere&wait=1"
    expected = SERVERS * WEB_CONCURRENCY
    deadline = time.monotonic() + 20
    with ThreadPoolExecutor(4 * SERVERS) as pool:
        while time.monotonic() < deadline:
            ports = list(cluster.servers.values()) * 4
            list(pool.map(lambda port: request(port, "POST", path, token=secret), ports))
            try:
                wait_for(lambda: listening_processes() == expected, 0.5, "")
            except AssertionError:
                continue
            return
    raise AssertionError(f"{listening_processes()} of {expected} web processes listen")


def test_a_registration_through_one_server_wakes_a_waiter_on_another(
    cluster: Cluster, everyone_listens: None
) -> None:
    make_namespace("woken")
    waiter_token, waiter_secret = create_token(name="waiter", role="worker")
    _, registrar = create_token(name="registrar")
    # Three rounds at most: a round where the waiter's first try itself found
    # the task (registered in the instant after that try was counted and
    # before it read the queue) shows nothing, and is run again.
    tries = Tries(cluster, waiter_token)
    for attempt in range(3):
        task_id = f"t{attempt}"
        before = tries.count()
        waiter = Waiting(cluster.servers["app1"], waiter_secret, namespace="woken", wait=10)
        tries.wait_beyond(before, "the waiter's first try")
        registered = request(
            cluster.servers["app2"],
            "POST",
            "/v1/task",
            token=registrar,
            body={"id": task_id, "namespace_id": "woken"},
        )
        acknowledged = time.monotonic()
        assert registered.status == 201, registered
        assert waiter.leased() == [task_id]
        made = tries.count() - before
        if made == 1:
            continue
        # One try that found nothing, one woken by the registration.
        assert made == 2, f"{made} tries"
        assert waiter.answered - acknowledged < 1.0, waiter.answered - acknowledged
        return
    raise AssertionError("each time, the waiter's first try leased the task")


def test_a_waiter_with_nothing_registered_in_its_namespace_waits_its_full_wait(
    cluster: Cluster, everyone_listens: None
) -> None:
    make_namespace("quiet")
    make_namespace("busy")
    waiter_token, waiter_secret = create_token(name="waiter", role="worker")
    _, registrar = create_token(name="registrar")
    tries = Tries(cluster, waiter_token)
    waiter = Waiting(cluster.servers["app1"], waiter_secret, namespace="quiet", wait=2)
    tries.wait_beyond(0, "the waiter's first try")
    # Work in another namespace, through another server, wakes nobody here.
    registered = request(
        cluster.servers["app2"],
        "POST",
        "/v1/task",
        token=registrar,
        body={"id": "elsewhere", "namespace_id": "busy"},
    )
    assert registered.status == 201, registered
    assert waiter.leased() == []
    waited = waiter.answered - waiter.started
    assert 2.0 <= waited < 3.0, waited
    assert tries.count() == 1, "woken by another namespace's work"
