"""The HTTP layer of Client and AsyncClient against httpx.MockTransport:
requests as sent, answers as typed, errors as raised, and which failures
are retried."""

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from taskq_client import (
    AsyncClient,
    BadRequest,
    Client,
    ConfigError,
    Conflict,
    Forbidden,
    Lease,
    NewTask,
    NotFound,
    RateLimited,
    StaleLease,
    TaskqError,
    Unauthorized,
    Unavailable,
)
from taskq_client._retry import RetryPolicy, retry_after_seconds

Handler = Callable[[httpx.Request], httpx.Response]

TASK = {
    "id": "t1",
    "namespace_id": "ns",
    "timeout": 60,
    "retries_left": 3,
    "updated_at": 1767225600,
    "status": "idle",
    "lease_expires_at": None,
    "attempt": 0,
    "priority": 0,
    "available_at": 1767225600,
}
LEASE = {**TASK, "status": "in_progress", "attempt": 1, "lease_token": "tok1", "payload": {"a": 1}}


class Recorder:
    """A MockTransport handler answering from a script, keeping the requests."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    def bodies(self) -> list[object]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make(recorder: Recorder, **kwargs: Any) -> tuple[Client, Sleeps]:
    client = Client(
        "http://taskq.test", "secret", transport=httpx.MockTransport(recorder), **kwargs
    )
    sleeps = Sleeps()
    client._sleep = sleeps
    return client, sleeps


def ok(body: object, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def error(status: int, detail: str = "no", code: str = "x", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail, "code": code}, headers=headers)


def test_configuration_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TASKQ_URL", "http://from.env:8000/v1/")
    monkeypatch.setenv("TASKQ_TOKEN", "env-secret")
    recorder = Recorder(ok({"list": []}))
    with Client(transport=httpx.MockTransport(recorder)) as client:
        assert client.list_namespaces() == []
    (request,) = recorder.requests
    assert str(request.url) == "http://from.env:8000/v1/namespace"
    assert request.headers["Authorization"] == "Bearer env-secret"


def test_missing_configuration_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TASKQ_URL", raising=False)
    monkeypatch.delenv("TASKQ_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="TASKQ_URL"):
        Client()
    with pytest.raises(ConfigError, match="TASKQ_TOKEN"):
        Client("http://x")


def test_a_read_of_an_unknown_id_is_none():
    recorder = Recorder(httpx.Response(204))
    client, _ = make(recorder)
    assert client.get_task("a/b c") is None
    assert client.get_namespace("nope") is None
    assert client.attempts("nope") is None
    paths = [r.url.raw_path for r in recorder.requests]
    assert paths == [b"/v1/task/a%2Fb%20c", b"/v1/namespace/nope", b"/v1/task/nope/attempts"]


def test_a_task_is_typed_and_keeps_its_json():
    detail = {**TASK, "payload": [1], "result": None, "last_error": "boom", "new_field": 7}
    client, _ = make(Recorder(ok(detail)))
    task = client.get_task("t1")
    assert task is not None
    assert task.updated_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert task.lease_expires_at is None
    assert (task.payload, task.last_error) == ([1], "boom")
    assert task.raw["new_field"] == 7


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (413, BadRequest),
        (500, TaskqError),
    ],
)
def test_errors_are_typed_with_the_servers_detail(status, kind):
    client, _ = make(Recorder(error(status, detail="what is wrong", code="some_code")))
    with pytest.raises(kind) as raised:
        client.delete_task("t1")
    assert raised.value.detail == "what is wrong"
    assert raised.value.code == "some_code"
    assert raised.value.status == status
    assert type(raised.value) is kind


def test_validation_errors_keep_their_fields():
    answer = ok({"detail": "timeout: bad", "code": "invalid", "errors": {"timeout": ["bad"]}}, 400)
    client, _ = make(Recorder(answer))
    with pytest.raises(BadRequest) as raised:
        client.register_task("ns", "t1", timeout=0)
    assert raised.value.errors == {"timeout": ["bad"]}


def test_a_503_is_retried_after_its_retry_after():
    recorder = Recorder(
        error(503, code="database_unavailable", **{"Retry-After": "5"}), ok({"list": []})
    )
    client, sleeps = make(recorder)
    assert client.list_namespaces() == []
    assert len(recorder.requests) == 2
    assert sleeps == [5.0]


def test_retry_after_is_capped_by_max_backoff():
    recorder = Recorder(error(429, **{"Retry-After": "120"}), ok({"list": []}))
    client, sleeps = make(recorder, max_backoff=2.0)
    client.list_namespaces()
    assert sleeps == [2.0]


def test_backoff_grows_exponentially_with_full_jitter(monkeypatch):
    monkeypatch.setattr("random.uniform", lambda low, high: high)
    recorder = Recorder(httpx.ConnectError("refused"))
    client, sleeps = make(recorder, max_retries=4, backoff=0.5, max_backoff=3.0)
    with pytest.raises(Unavailable) as raised:
        client.list_namespaces()
    assert raised.value.code == "connect_error"
    assert sleeps == [0.5, 1.0, 2.0, 3.0]
    assert len(recorder.requests) == 5


def test_jitter_stays_within_the_ceiling():
    policy = RetryPolicy(backoff=1.0, max_backoff=4.0)
    waits = [policy.delay(3) for _ in range(200)]
    assert all(0 <= w <= 4.0 for w in waits)
    assert len(set(waits)) > 100


def test_an_http_date_retry_after_is_read():
    response = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after_seconds(response) == 0.0
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "3"})) == 3.0
    assert retry_after_seconds(httpx.Response(503)) is None


def test_retries_end_with_the_last_error():
    recorder = Recorder(error(429, detail="slow down", **{"Retry-After": "1"}))
    client, sleeps = make(recorder, max_retries=2)
    with pytest.raises(RateLimited) as raised:
        client.get_task("t1")
    assert raised.value.retry_after == 1.0
    assert len(recorder.requests) == 3
    assert len(sleeps) == 2


def test_a_capture_is_not_resent_after_a_lost_answer():
    recorder = Recorder(httpx.ReadTimeout("slow"), ok({"list": [LEASE]}))
    client, _ = make(recorder)
    with pytest.raises(Unavailable) as raised:
        client.capture("ns")
    assert raised.value.code == "no_answer"
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    "first",
    [httpx.ConnectError("refused"), error(503, code="server_busy"), error(429)],
    ids=["connect", "503", "429"],
)
def test_a_capture_is_resent_when_it_never_reached_the_server(first):
    recorder = Recorder(first, ok({"list": [LEASE]}))
    client, _ = make(recorder)
    (lease,) = client.capture("ns", limit=5, wait=3)
    assert isinstance(lease, Lease)
    assert (lease.lease_token, lease.payload, lease.attempt) == ("tok1", {"a": 1}, 1)
    assert len(recorder.requests) == 2
    assert recorder.bodies()[-1] == {"namespace_id": "ns", "limit": 5, "wait": 3}


def test_a_capture_is_not_resent_after_a_gateway_timeout():
    recorder = Recorder(error(504), ok({"list": [LEASE]}))
    client, _ = make(recorder)
    with pytest.raises(Unavailable):
        client.capture("ns")
    assert len(recorder.requests) == 1


def test_a_long_poll_waits_longer_than_the_wait():
    seen: list[object] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return ok({"list": []})

    client, _ = make(Recorder(answer), timeout=5.0)
    client.capture("ns", wait=20)
    client.capture("ns")
    long_poll, plain = seen
    assert long_poll["read"] == 25.0  # type: ignore[index]
    assert plain["read"] == 5.0  # type: ignore[index]


def test_a_registration_is_resent_only_when_it_never_arrived():
    recorder = Recorder(httpx.ConnectError("refused"), ok(TASK, 201))
    client, _ = make(recorder)
    assert client.register_task("ns", "t1").id == "t1"
    assert len(recorder.requests) == 2
    recorder = Recorder(httpx.RemoteProtocolError("dropped"), ok(TASK, 201))
    client, _ = make(recorder)
    with pytest.raises(Unavailable, match="may have been carried out"):
        client.register_task("ns", "t1")
    assert len(recorder.requests) == 1


def test_a_registration_sends_only_what_is_given():
    recorder = Recorder(ok(TASK, 201))
    client, _ = make(recorder)
    client.register_task(
        "ns", "t1", timeout=5, payload=None, available_at=datetime.fromtimestamp(9, UTC)
    )
    client.register_task("ns", "t2")
    assert recorder.bodies() == [
        {"id": "t1", "namespace_id": "ns", "timeout": 5, "available_at": 9, "payload": None},
        {"id": "t2", "namespace_id": "ns"},
    ]


def test_a_list_of_tasks_is_registered_in_one_request():
    recorder = Recorder(ok({"list": [TASK, {**TASK, "id": "t2"}]}, 201))
    client, _ = make(recorder)
    tasks = client.register_tasks(
        [NewTask("t1", "ns", priority=2), NewTask("t2", "ns", delay=10, payload={"k": 1})]
    )
    assert [t.id for t in tasks] == ["t1", "t2"]
    assert recorder.bodies() == [
        [
            {"id": "t1", "namespace_id": "ns", "priority": 2},
            {"id": "t2", "namespace_id": "ns", "delay": 10, "payload": {"k": 1}},
        ]
    ]
    assert client.register_tasks([]) == []
    assert len(recorder.requests) == 1


def test_a_get_is_resent_after_a_lost_answer():
    recorder = Recorder(httpx.ReadTimeout("slow"), ok(TASK))
    client, _ = make(recorder)
    task = client.get_task("t1")
    assert task is not None
    assert len(recorder.requests) == 2


def test_a_resent_delete_that_finds_nothing_succeeded_the_first_time():
    recorder = Recorder(httpx.ReadTimeout("slow"), error(404))
    client, _ = make(recorder)
    client.delete_task("t1")
    assert len(recorder.requests) == 2
    client, _ = make(Recorder(error(404)))
    with pytest.raises(NotFound):
        client.delete_namespace("ns")


def test_list_tasks_follows_the_cursor_with_its_own_base_url():
    first = ok({"list": [TASK], "next": "http://internal:9/v1/task?cursor=abc&namespace_id=ns"})
    second = ok({"list": [{**TASK, "id": "t2"}], "next": None})
    recorder = Recorder(first, second)
    client, _ = make(recorder)
    tasks = client.list_tasks("ns", status=["idle", "failed"], fields=["payload"], page_size=1)
    assert [t.id for t in tasks] == ["t1", "t2"]
    urls = [str(r.url) for r in recorder.requests]
    assert urls == [
        "http://taskq.test/v1/task?namespace_id=ns&status=idle&status=failed"
        "&fields=payload&page_size=1",
        "http://taskq.test/v1/task?cursor=abc&namespace_id=ns",
    ]


def test_list_tasks_pages_only_as_iterated():
    recorder = Recorder(ok({"list": [TASK], "next": "http://x/v1/task?cursor=abc"}))
    client, _ = make(recorder)
    assert next(client.list_tasks("ns", status="idle")).id == "t1"
    assert len(recorder.requests) == 1


def test_release_sends_leases_with_their_tokens_and_reports_errors():
    answer = ok(
        {
            "list": [{**TASK, "status": "failed"}],
            "errors": [{"id": "t2", "code": "stale_lease", "detail": "captured again"}],
        }
    )
    recorder = Recorder(answer)
    client, _ = make(recorder)
    leases = [Lease.from_json(LEASE), Lease.from_json({**LEASE, "id": "t2", "lease_token": "x"})]
    result = client.release(leases, "failed", error={"msg": "boom"}, retry_after=1.2)
    assert [t.id for t in result.released] == ["t1"]
    assert [(e.id, e.code) for e in result.errors] == [("t2", "stale_lease")]
    assert recorder.bodies() == [
        {
            "status": "failed",
            "leases": [{"id": "t1", "lease_token": "tok1"}, {"id": "t2", "lease_token": "x"}],
            "error": {"msg": "boom"},
            "retry_after": 2,
        }
    ]
    assert recorder.requests[0].method == "PUT"


def test_release_is_resent_after_a_lost_answer_and_says_so():
    answer = ok({"list": [], "errors": [{"id": "t1", "code": "not_in_progress", "detail": "."}]})
    recorder = Recorder(httpx.ReadTimeout("slow"), answer)
    client, _ = make(recorder)
    result = client.release(Lease.from_json(LEASE), "done", result={"n": 1})
    assert result.resent
    assert recorder.bodies()[0] == recorder.bodies()[1]


@pytest.mark.parametrize(
    ("code", "kind"),
    [("stale_lease", StaleLease), ("not_in_progress", Conflict), ("not_found", NotFound)],
)
def test_release_one_raises_the_leases_error(code, kind):
    answer = ok({"list": [], "errors": [{"id": "t1", "code": code, "detail": "gone"}]})
    client, _ = make(Recorder(answer))
    with pytest.raises(kind) as raised:
        client.release_one(Lease.from_json(LEASE), "done")
    assert raised.value.code == code
    assert type(raised.value) is kind


def test_release_one_answers_the_task():
    client, _ = make(Recorder(ok({"list": [{**TASK, "status": "done"}], "errors": []})))
    assert client.release_one(Lease.from_json(LEASE), "done").status == "done"


def test_a_large_release_goes_in_chunks_of_a_thousand():
    recorder = Recorder(lambda r: ok({"list": [], "errors": []}))
    client, _ = make(recorder)
    leases = [Lease.from_json({**LEASE, "id": f"t{i}"}) for i in range(2500)]
    client.release(leases, "idle")
    sizes = [len(body["leases"]) for body in recorder.bodies()]  # type: ignore[index]
    assert sizes == [1000, 1000, 500]
    assert client.release([], "idle").released == []
    assert len(recorder.requests) == 3


def test_a_release_status_is_checked_before_sending():
    recorder = Recorder(ok({}))
    client, _ = make(recorder)
    with pytest.raises(ValueError, match="status"):
        client.release(Lease.from_json(LEASE), "finished")  # type: ignore[arg-type]
    assert recorder.requests == []


def test_extend_answers_the_new_expiry():
    extended = {**LEASE, "lease_expires_at": 1767226200}
    del extended["payload"]
    recorder = Recorder(ok({"list": [extended], "errors": []}))
    client, _ = make(recorder)
    result = client.extend([Lease.from_json(LEASE)], timeout=600)
    (lease,) = result.extended
    assert lease.lease_expires_at == datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    assert recorder.bodies() == [{"leases": [{"id": "t1", "lease_token": "tok1"}], "timeout": 600}]


def test_namespaces_are_registered_read_changed_and_deleted():
    settings = {
        "id": "ns",
        "default_timeout": 60,
        "default_retries": None,
        "retry_backoff": {"kind": "none"},
        "history": "failures",
    }
    recorder = Recorder(
        ok(settings, 201), ok(settings), ok({**settings, "history": "all"}), httpx.Response(204)
    )
    client, _ = make(recorder)
    created = client.create_namespace("ns", default_timeout=60)
    assert created.default_timeout == 60
    assert client.get_namespace("ns") == created
    assert client.update_namespace("ns", history="all").history == "all"
    client.delete_namespace("ns")
    assert [(r.method, r.url.path) for r in recorder.requests] == [
        ("POST", "/v1/namespace"),
        ("GET", "/v1/namespace/ns"),
        ("PATCH", "/v1/namespace/ns"),
        ("DELETE", "/v1/namespace/ns"),
    ]
    assert recorder.bodies()[:3] == [{"id": "ns", "default_timeout": 60}, None, {"history": "all"}]


def test_the_async_client_retries_and_pages_as_the_sync_one():
    async def scenario() -> tuple[list[str], int, list[float]]:
        recorder = Recorder(
            error(503, **{"Retry-After": "1"}),
            ok({"list": [TASK], "next": "http://x/v1/task?cursor=abc"}),
            ok({"list": [{**TASK, "id": "t2"}], "next": None}),
        )
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        async with AsyncClient(
            "http://taskq.test", "secret", transport=httpx.MockTransport(recorder)
        ) as client:
            client._sleep = sleep
            ids = [task.id async for task in client.list_tasks("ns")]
        return ids, len(recorder.requests), sleeps

    ids, requests, sleeps = asyncio.run(scenario())
    assert ids == ["t1", "t2"]
    assert requests == 3
    assert sleeps == [1.0]


def test_the_async_client_does_not_resend_a_capture_after_a_lost_answer():
    async def scenario() -> int:
        recorder = Recorder(httpx.ReadTimeout("slow"), ok(TASK))
        async with AsyncClient(
            "http://taskq.test", "secret", transport=httpx.MockTransport(recorder)
        ) as client:
            with pytest.raises(Unavailable):
                await client.capture("ns", wait=1)
            assert await client.get_task("t1") is not None
        return len(recorder.requests)

    assert asyncio.run(scenario()) == 2
