"""The pieces of long polling that need no server: which requests wait, whom
a notification wakes, and where the listening connection goes.
(tests/test_long_polling.py runs it all against the real web server.)"""

import asyncio
import subprocess
import sys

import pytest
from django.core import checks
from django.test import override_settings

from tasks_app import waiting
from tasks_app.waiting import Hub


def scope(method: str = "POST", path: str = "/v1/task/capture", query: bytes = b"") -> dict:
    return {"method": method, "path": path, "query_string": query}


@pytest.mark.parametrize(
    ("request_scope", "body", "expected"),
    [
        (scope(query=b"namespace_id=ns&wait=5"), b"", ("ns", 5)),
        (scope("GET", query=b"namespace_id=ns&wait=20"), b"", ("ns", 20)),
        (scope(path="/v1/task/capture/", query=b"namespace_id=ns&wait=1"), b"", ("ns", 1)),
        # A JSON body replaces the query string, as the view reads it.
        (scope(query=b"namespace_id=q&wait=5"), b'{"namespace_id": "b", "wait": 3}', ("b", 3)),
        (scope(query=b"namespace_id=ns&wait=0"), b"", None),
        (scope(query=b"namespace_id=ns"), b"", None),
        (scope(query=b"namespace_id=ns&wait=21"), b"", None),
        (scope(query=b"namespace_id=ns&wait=1.5"), b"", None),
        (scope(query=b"wait=5"), b"", None),
        (scope(), b'{"namespace_id": "ns", "wait": true}', None),
        (scope(), b"not json", None),
        (scope("PUT", query=b"namespace_id=ns&wait=5"), b"", None),
        (scope(path="/v1/task", query=b"namespace_id=ns&wait=5"), b"", None),
    ],
)
def test_which_requests_wait(request_scope, body, expected):
    assert waiting.requested(request_scope, body) == expected


def test_a_notification_wakes_one_waiter_and_a_capture_that_got_tasks_two_more():
    async def scenario() -> None:
        hub = Hub(lambda: {})
        hub._schedule_refresh = lambda namespace_id: None  # type: ignore[method-assign]
        hub.start = lambda: None  # type: ignore[method-assign]
        first, second, third, fourth = (hub.enter("ns") for _ in range(4))
        other = hub.enter("other")
        hub._wake_one("ns")
        assert [w.woken.is_set() for w in (first, second, third, fourth)] == [1, 0, 0, 0]
        hub.captured(first, got=False)
        assert not second.woken.is_set()
        hub.captured(first, got=True)
        assert [w.woken.is_set() for w in (second, third, fourth)] == [1, 1, 0]
        assert not other.woken.is_set()
        # A woken waiter that leaves passes its wake on.
        hub.leave(second)
        assert fourth.woken.is_set()

    asyncio.run(scenario())


def test_a_waiter_is_told_when_its_wait_ends_unwoken():
    async def scenario() -> None:
        hub = Hub(lambda: {})
        hub._schedule_refresh = lambda namespace_id: None  # type: ignore[method-assign]
        hub.start = lambda: None  # type: ignore[method-assign]
        hub.listening.set()
        waiter = hub.enter("ns")
        assert await hub.wait(waiter, 0.05) is False
        asyncio.get_running_loop().call_later(0.01, hub._wake_one, "ns")
        assert await hub.wait(waiter, 5) is True

    asyncio.run(scenario())


def test_without_a_listening_connection_waiters_try_again_every_second():
    async def scenario() -> None:
        hub = Hub(lambda: {})
        hub._schedule_refresh = lambda namespace_id: None  # type: ignore[method-assign]
        hub.start = lambda: None  # type: ignore[method-assign]
        waiter = hub.enter("ns")
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await hub.wait(waiter, 5) is True
        assert 0.9 < loop.time() - started < 2

    asyncio.run(scenario())


@override_settings(TASKQ_LISTEN_DATABASE={"host": "pg.internal", "dbname": "taskq"})
def test_the_listening_connection_goes_where_taskq_listen_database_url_says():
    params = waiting.listen_conninfo()
    assert (params["host"], params["dbname"]) == ("pg.internal", "taskq")
    assert params["application_name"] == "taskq-listen"


def test_taskq_listen_database_url_is_read_from_the_environment():
    code = "from django.conf import settings; print(settings.TASKQ_LISTEN_DATABASE)"
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        env={
            "DJANGO_SETTINGS_MODULE": "taskq_project.settings",
            "PATH": "/usr/bin:/bin",
            "TASKQ_LISTEN_DATABASE_URL": "postgres://u:p@pg.internal:6432/taskq",
            "DATABASE_URL": "postgres://app@pgbouncer:6432/taskq",
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == (
        "{'host': 'pg.internal', 'port': 6432, 'dbname': 'taskq', 'user': 'u', 'password': 'p'}"
    )


@pytest.mark.parametrize(
    ("pooler", "listen", "warned"),
    [
        ("transaction", None, True),
        ("transaction", {"host": "pg.internal"}, False),
        ("session", None, False),
        ("", None, False),
    ],
)
def test_behind_a_transaction_pooler_a_listen_database_is_asked_for(pooler, listen, warned):
    with override_settings(TASKQ_DB_POOLER=pooler, TASKQ_LISTEN_DATABASE=listen):
        ids = [message.id for message in checks.run_checks()]
    assert ("taskq.W001" in ids) is warned
