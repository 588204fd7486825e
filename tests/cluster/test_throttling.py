"""A token's rate is counted once for the whole cluster, in the shared cache.

The cluster runs read-only tokens at READ_ONLY_REQUESTS_PER_HOUR (conftest.py).
With a cache per process (TASKQ_CACHE_URL unset, or each server on a Redis
of its own) each of the six web processes would allow that many.
"""

import time
from itertools import cycle, islice

import pytest

from apikeys_app.services import create_token
from tests.cluster.stack import READ_ONLY_REQUESTS_PER_HOUR, Answer, Cluster, request

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HOUR = 3600


def test_requests_spread_over_every_server_are_limited_as_one(cluster: Cluster) -> None:
    ports = list(cluster.servers.values())
    # The counter is a fixed window of an hour: a round that straddles its
    # end starts counting again half way, and is run again.
    for attempt in range(2):
        _, secret = create_token(name=f"dashboard-{attempt}", role="read-only")
        window = int(time.time() // HOUR)

        def get(port: int, token: str = secret) -> Answer:
            return request(port, "GET", "/v1/namespace", token=token)

        allowed = [get(port) for port in islice(cycle(ports), READ_ONLY_REQUESTS_PER_HOUR)]
        # The next one, on each server: each of them has already served only
        # a third of the limit itself.
        over = [get(port) for port in ports]
        if int(time.time() // HOUR) == window:
            break
    assert [answer.status for answer in allowed] == [200] * READ_ONLY_REQUESTS_PER_HOUR
    assert [answer.status for answer in over] == [429] * len(ports)
    for answer in over:
        # Until the window's end, at most the hour.
        assert 1 <= int(answer.headers["retry-after"]) <= HOUR, answer.headers
