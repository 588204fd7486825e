"""The HTTP figures of GET /metrics under the real server: every worker
process's requests counted once, whichever process answers the scrape."""

import glob
import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apikeys_app.services import create_token
from tests.factories import make_namespace
from tests.test_web_server import BODY_LIMIT, request, serve

pytestmark = pytest.mark.django_db(transaction=True)

ROUTE = "v1/task/{pk}"


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture(scope="module")
def server(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory, metrics_dir: Path
) -> Iterator[int]:
    # A stale file from an earlier server, which the server must not count.
    (metrics_dir / "counter_1.db").write_bytes(b"\0" * 8)
    yield from serve(
        tmp_path_factory.mktemp("server"),
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    status, _, body = request(port, "GET", "/metrics")
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def requests_of(samples: dict[tuple[str, tuple], float], route: str, method: str, code: str):
    labels = (("code", code), ("method", method), ("route", route))
    return samples.get(("taskq_http_requests_total", labels), 0.0)


def counting_workers(metrics_dir: Path) -> set[int]:
    """The worker processes that have counted a request (each keeps a file)."""
    return {int(Path(p).stem.split("_")[1]) for p in glob.glob(f"{metrics_dir}/counter_*.db")}


def test_every_workers_requests_are_counted_once(server, metrics_dir):
    assert 1 not in counting_workers(metrics_dir)
    _, token = create_token(name="counted")
    before = requests_of(scrape(server), ROUTE, "GET", "204")
    sent = 0
    # Each on a connection of its own, so the kernel hands them to whichever
    # worker accepts first, until both have answered some.
    while len(counting_workers(metrics_dir)) < 2 or sent < 20:
        status, _, _ = request(
            server, "GET", f"/v1/task/id-{sent}", headers={"Authorization": f"Bearer {token}"}
        )
        assert status == 204
        sent += 1
        assert sent < 2000, "one worker answered every request"
    for _ in range(4):
        assert requests_of(scrape(server), ROUTE, "GET", "204") - before == sent

    # A worker killed mid-run takes none of its counts with it: the master
    # starts another, and the dead one's file is still summed.
    victim = max(counting_workers(metrics_dir))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        try:
            samples = scrape(server)
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert requests_of(samples, ROUTE, "GET", "204") - before == sent


def test_a_long_poll_counts_once_with_its_wait(server):
    make_namespace("ns")
    _, token = create_token(name="poller")
    route = ("route", "v1/task/capture")
    before = scrape(server)
    started = time.monotonic()
    status, _, body = request(
        server,
        "GET",
        "/v1/task/capture?namespace_id=ns&wait=1",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert (status, json.loads(body), time.monotonic() - started > 1) == (200, {"list": []}, True)
    after = scrape(server)

    assert (
        requests_of(after, "v1/task/capture", "GET", "200")
        - requests_of(before, "v1/task/capture", "GET", "200")
        == 1
    )

    def bucket(samples, le: str) -> float:
        key = ("taskq_http_request_duration_seconds_bucket", (("le", le), route))
        return samples.get(key, 0.0)

    assert bucket(after, "1.0") - bucket(before, "1.0") == 0
    assert bucket(after, "2.5") - bucket(before, "2.5") == 1


def test_answers_given_before_django_are_counted_by_route(server):
    _, token = create_token(name="too-large")
    before = scrape(server)
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    try:
        conn.request(
            "POST",
            "/v1/task",
            body=b"x" * (BODY_LIMIT + 1),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    after = scrape(server)
    assert (
        requests_of(after, "v1/task", "POST", "413") - requests_of(before, "v1/task", "POST", "413")
        == 1
    )
