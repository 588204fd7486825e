"""The HTTP figures of `GET /metrics`: requests by route, method and code, and
their durations by route.

Counted in each web process, and summed across the processes of a server by
prometheus-client's multiprocess mode: gunicorn's configuration points
PROMETHEUS_MULTIPROC_DIR at a directory of its own, emptied when the server
starts, where every worker keeps its counts in a memory-mapped file, and a
scrape, whichever process answers it, adds up the files of all of them (the
dead ones' too, so a restarted worker loses none). Without the variable (the
test client, `manage.py runserver`) the counts are this process's own.

Each server counts its own requests; Prometheus scrapes every server, as the
README's production layout says. The task counters are not counted here at
all: they come from the database (tasks_app.metrics).

`route` is the URL pattern that served the request, written as
`v1/task/{pk}`, never the path itself: ids would make a series per task.
"""

import functools
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.registry import Collector

# The `_created` series say when a process first counted, which differs by
# process and is not summed in multiprocess mode: one form for both modes.
disable_created_metrics()

# Requests no URL pattern matched (a 404), or answered before one was looked
# for.
UNMATCHED = "unmatched"
# Where the ASGI layer leaves a dict for the route (taskq_project.asgi): it
# records the request itself once the answer is sent, so a long-polling
# capture counts once, with its wait, whatever number of tries it took.
OBSERVED_KEY = "taskq.observed"

# From a capture's few milliseconds to the longest long poll (`wait`, 20 s
# at most: tasks_app.waiting.MAX_WAIT_SECONDS) and a little over.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30)

# Not registered anywhere: `registry()` chooses how they are read.
REQUESTS = Counter(
    "taskq_http_requests",
    "HTTP requests answered, by URL pattern, method and status code.",
    ["route", "method", "code"],
    registry=None,
)
DURATION = Histogram(
    "taskq_http_request_duration_seconds",
    "Time from a request's arrival to its answer, by URL pattern (long polls included).",
    ["route"],
    buckets=_BUCKETS,
    registry=None,
)

_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")
_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")


# Patterns are the URLconf's, a few dozen.
@functools.lru_cache(maxsize=512)
def route_name(pattern: str) -> str:
    """`^v1/task/(?P<pk>[^/.]+)/?$` and `task/<str:pk>/` as `v1/task/{pk}`."""
    route = _GROUP.sub(r"{\1}", pattern)
    route = _CONVERTER.sub(r"{\1}", route)
    route = route.replace("^", "").replace("$", "").replace("/?", "").rstrip("/")
    return route or "/"


def route_of_path(path: str) -> str:
    """The route of `path`, for a request Django did not see."""
    try:
        match = resolve(path)
    except Resolver404:
        return UNMATCHED
    return route_name(match.route)


# The labelled series, looked up once each: `labels()` takes a lock and
# builds a key at every call. Bounded by routes x methods x codes.
_requests: dict[tuple[str, str, int], Any] = {}
_durations: dict[str, Any] = {}


def observe(*, route: str, method: str, code: int, seconds: float) -> None:
    key = (route, method, code)
    counter = _requests.get(key)
    if counter is None:
        counter = _requests[key] = REQUESTS.labels(route, method, str(code))
    histogram = _durations.get(route)
    if histogram is None:
        histogram = _durations[route] = DURATION.labels(route)
    counter.inc()
    histogram.observe(seconds)


class _ThisProcess(Collector):
    def collect(self) -> Iterator[Any]:
        yield from REQUESTS.collect()
        yield from DURATION.collect()


def register(registry: CollectorRegistry) -> None:
    """Add the HTTP figures to a scrape's registry."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_ThisProcess())


class RouteMiddleware:
    """Names each request's route for the counts, and counts the requests the
    ASGI layer does not (the test client, runserver)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = _clock()
        response = self.get_response(request)
        match = request.resolver_match
        route = route_name(match.route) if match is not None else UNMATCHED
        box = request.META.get(OBSERVED_KEY)
        if box is not None:
            box["route"] = route
        else:
            observe(
                route=route,
                method=request.method or "GET",
                code=response.status_code,
                seconds=_clock() - started,
            )
        return response


_clock = time.perf_counter
