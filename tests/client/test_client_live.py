"""Client and AsyncClient against the real server (gunicorn, PostgreSQL):
every call as the API answers it. (A PostgreSQL restart ridden out is in
tests/test_database_faults.py, on its disposable cluster.)"""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from taskq_client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    Lease,
    NewTask,
    NotFound,
    StaleLease,
    Unauthorized,
)

from apikeys_app.services import create_token
from tasks_app.models import Task
from tasks_app.services import release_tasks
from tests.test_web_server import serve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from serve(tmp_path_factory.mktemp("client-live"))


@pytest.fixture
def url(server: int) -> str:
    return f"http://127.0.0.1:{server}"


@pytest.fixture
def client(url: str, db: None) -> Iterator[Client]:
    _, secret = create_token(name="live-client")
    with Client(url, secret) as opened:
        yield opened


def test_namespaces_round_trip(client: Client):
    created = client.create_namespace("ns", default_timeout=60, history="all")
    assert (created.id, created.default_timeout, created.history) == ("ns", 60, "all")
    assert created.retry_backoff == {"kind": "none"}
    with pytest.raises(Conflict) as taken:
        client.create_namespace("ns")
    assert taken.value.status == 409
    changed = client.update_namespace(
        "ns", default_timeout=None, retry_backoff={"kind": "exponential", "base": 5}
    )
    assert changed.default_timeout is None
    assert changed.retry_backoff == {
        "kind": "exponential",
        "base": 5.0,
        "max": 3600.0,
        "jitter": 0.0,
    }
    assert client.get_namespace("ns") == changed
    assert [n.id for n in client.list_namespaces()] == ["ns"]
    assert client.get_namespace("a/b c") is None
    client.delete_namespace("ns")
    assert client.get_namespace("ns") is None
    with pytest.raises(NotFound):
        client.delete_namespace("ns")
    with pytest.raises(NotFound):
        client.update_namespace("ns", history="all")


def test_a_paused_namespace_captures_nothing_until_resumed(client: Client):
    client.create_namespace("ns", max_in_flight=2)
    client.register_tasks([NewTask(id=f"t{n}", namespace_id="ns") for n in range(3)])
    paused = client.pause_namespace("ns")
    assert (paused.paused, paused.max_in_flight) == (True, 2)
    assert paused.paused_at is not None
    assert client.capture("ns", limit=3) == []
    resumed = client.resume_namespace("ns")
    assert (resumed.paused, resumed.paused_at) == (False, None)
    assert [lease.id for lease in client.capture("ns", limit=3)] == ["t0", "t1"]
    with pytest.raises(NotFound):
        client.pause_namespace("nope")
    stats = client.namespace_stats("ns")
    assert stats is not None
    assert (stats.in_flight, stats.counts["in_progress"], stats.counts["idle"]) == (2, 2, 1)
    assert stats.throughput["last_5_minutes"] == {
        "captured": 2,
        "done": 0,
        "failed": 0,
        "expired": 0,
    }
    assert client.namespace_stats("nope") is None


def test_a_purge_deletes_the_states_named(client: Client):
    client.create_namespace("ns")
    client.register_tasks([NewTask(id=f"t{n}", namespace_id="ns") for n in range(4)])
    client.release(client.capture("ns", limit=3), "done")
    assert client.purge_namespace("ns", ["done"], older_than=3600) == {"done": 0}
    assert client.purge_namespace("ns", ["done", "failed_final"]) == {"done": 3, "failed_final": 0}
    assert [task.id for task in client.list_tasks("ns")] == ["t3"]
    with pytest.raises(NotFound):
        client.purge_namespace("nope", ["done"])
    with pytest.raises(BadRequest, match="states"):
        client.purge_namespace("ns", ["finished"])


def test_tasks_round_trip(client: Client):
    client.create_namespace("ns")
    task = client.register_task(
        "ns", "a/b c", timeout=30, retries_left=1, priority=2, payload={"k": [1]}, delay=60
    )
    assert (task.id, task.timeout, task.retries_left, task.priority) == ("a/b c", 30, 1, 2)
    assert task.available_at is not None and task.updated_at is not None
    assert (task.available_at - task.updated_at).total_seconds() == 60
    read = client.get_task("a/b c")
    assert read is not None
    assert (read.payload, read.result, read.last_error) == ({"k": [1]}, None, None)
    assert client.get_task("missing") is None
    assert client.attempts("missing") is None
    assert client.attempts("a/b c") == []
    with pytest.raises(Conflict):
        client.register_task("ns", "a/b c")
    with pytest.raises(BadRequest) as unknown:
        client.register_task("nope", "t")
    assert "nope" in unknown.value.detail
    with pytest.raises(BadRequest) as invalid:
        client.register_task("ns", "t", timeout=0)
    assert "timeout" in invalid.value.errors
    client.delete_task("a/b c")
    assert not Task.objects.filter(pk="a/b c").exists()
    with pytest.raises(NotFound):
        client.delete_task("a/b c")


def test_a_list_registers_all_or_nothing_and_lists_page_by_page(client: Client):
    client.create_namespace("ns")
    tasks = client.register_tasks(NewTask(f"t{i}", "ns", payload=i) for i in range(5))
    assert [t.id for t in tasks] == [f"t{i}" for i in range(5)]
    with pytest.raises(Conflict):
        client.register_tasks([NewTask("new", "ns"), NewTask("t0", "ns")])
    assert not Task.objects.filter(pk="new").exists()
    listed = list(client.list_tasks("ns", page_size=2, fields=["payload"]))
    assert [(t.id, t.payload) for t in listed] == [(f"t{i}", i) for i in range(5)]
    leases = {lease.id: lease for lease in client.capture("ns", limit=4)}
    client.release([leases["t1"], leases["t3"]], "done")
    client.release([leases["t0"], leases["t2"]], "idle")
    assert [t.id for t in client.list_tasks("ns", status="done", page_size=1)] == ["t1", "t3"]
    assert [t.id for t in client.list_tasks("ns", status=["done", "idle"])] == [
        f"t{i}" for i in range(5)
    ]


def test_capture_release_and_extend_go_by_the_lease_token(client: Client):
    client.create_namespace("ns")
    client.register_tasks([NewTask("t1", "ns", payload="p", timeout=60), NewTask("t2", "ns")])
    first, second = client.capture("ns", limit=5, wait=1)
    assert isinstance(first, Lease)
    assert (first.id, first.payload, first.attempt, first.status) == ("t1", "p", 1, "in_progress")
    extended = client.extend([first], timeout=600)
    assert [lease.id for lease in extended.extended] == ["t1"]
    assert extended.extended[0].lease_token == first.lease_token
    row = Task.objects.get(pk="t1")
    assert row.lease_expires_at is not None
    assert (row.lease_expires_at - row.updated_at).total_seconds() == 600
    done = client.release_one(first, "done", result={"bytes": 3})
    assert done.status == "done"
    assert client.get_task("t1").result == {"bytes": 3}  # type: ignore[union-attr]
    # An operator hands t2 back and another capture takes it: our token is stale.
    release_tasks(status="idle", task_ids=["t2"])
    (again,) = client.capture("ns")
    with pytest.raises(StaleLease):
        client.release_one(second, "failed", error="late")
    refused = client.extend(second)
    assert [(e.id, e.code) for e in refused.errors] == [("t2", "stale_lease")]
    with pytest.raises(Conflict) as ended:
        client.release_one(first, "done")
    assert ended.value.code == "not_in_progress"
    result = client.release([again], "failed", error={"type": "Timeout"}, retry_after=120)
    assert [t.status for t in result.released] == ["failed"]
    attempts = client.attempts("t2")
    assert attempts is not None
    assert [(a.attempt, a.outcome, a.error) for a in attempts] == [
        (2, "failed", {"type": "Timeout"}),
        (1, "handed_back", None),
    ]
    with pytest.raises(NotFound):
        client.capture("unknown")


def test_tokens_are_refused_as_typed_errors(url: str, db: None):
    with Client(url, "not-a-token") as stranger, pytest.raises(Unauthorized):
        stranger.list_namespaces()
    _, reader = create_token(name="reader", role="read-only")
    with Client(url, reader) as read_only:
        assert read_only.list_namespaces() == []
        with pytest.raises(Forbidden):
            read_only.capture("ns")


def test_the_async_client_round_trip(url: str, db: None):
    _, secret = create_token(name="live-async")

    async def scenario() -> tuple[list[str], str]:
        async with AsyncClient(url, secret) as client:
            await client.create_namespace("ns")
            await client.register_tasks([NewTask(f"t{i}", "ns") for i in range(3)])
            ids = [task.id async for task in client.list_tasks("ns", page_size=2)]
            leases = await client.capture("ns", limit=3)
            result = await client.release(leases, "done")
            assert await client.get_task("nope") is None
            assert await client.purge_namespace("ns", ["done"]) == {"done": 3}
            return ids, ",".join(t.status for t in result.released)

    ids, statuses = asyncio.run(scenario())
    assert ids == ["t0", "t1", "t2"]
    assert statuses == "done,done,done"
