import math
import re
import select
import time

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.crypto import constant_time_compare
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from rest_framework.exceptions import ValidationError

from taskq_project import http_metrics
from taskq_project.ids import id_problem
from tasks_app.metrics import TaskqCollector
from tasks_app.sweeper import sweeper_health

# An encoded slash right before the end of the path (and its optional
# trailing slash): `/v1/task/x%2F` asks for the id `x/`, which cannot exist.
_ENCODED_TRAILING_SLASH = re.compile(r"%2f/?$", re.IGNORECASE)


def validated_path_id(value: str, request: HttpRequest | None = None) -> str:
    """An id taken from the URL path, refused with a 400 when no id could have it.

    When the server passes the undecoded path on (gunicorn's RAW_URI), an id
    ending in an encoded '/' is refused too; once decoded it would read as its
    neighbour without the slash.
    """
    problem = id_problem(value)
    if problem is None and request is not None:
        raw = request.META.get("RAW_URI", "").split("?", 1)[0]
        if _ENCODED_TRAILING_SLASH.search(raw):
            problem = "must not end with '/'"
    if problem is not None:
        raise ValidationError({"id": [f"Id {problem}."]})
    return value


# How long /healthz waits for the database before it says it is down: load
# balancers probe with timeouts of a few seconds, and must hear an answer.
PROBE_SECONDS = 2.0


def probe_database(*, timeout: float = PROBE_SECONDS) -> str | None:
    """None when the database answers `SELECT 1` within `timeout`, else why not.

    Its own connection, with the deadline enforced by this process: a paused
    or unreachable server never answers, and neither the server's statement
    timeout nor the kernel would end the wait in time.
    """
    params = {
        key: value
        for key, value in connection.get_connection_params().items()
        if key in {"dbname", "user", "password", "host", "port", "sslmode", "options"}
    }
    deadline = time.monotonic() + timeout
    try:
        conn = psycopg.Connection.connect(
            **params, autocommit=True, connect_timeout=max(1, math.ceil(timeout))
        )
    except psycopg.Error as exc:
        return f"cannot connect ({exc.__class__.__name__})"
    try:
        pgconn = conn.pgconn
        pgconn.send_query(b"SELECT 1")
        while True:
            pgconn.flush()
            pgconn.consume_input()
            if not pgconn.is_busy():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([pgconn.socket], [], [], remaining)[0]:
                return f"no answer within {timeout:g}s"
        result = pgconn.get_result()
        if result is None or result.status != psycopg.pq.ExecStatus.TUPLES_OK:
            return "the probe query failed"
        return None
    except psycopg.Error as exc:
        return f"connection lost ({exc.__class__.__name__})"
    finally:
        conn.close()


# When this process started: until the sweeper has had three intervals to run
# since then, a missing or old sweep means the stack is starting, not sick.
_STARTED = time.monotonic()


def index(request: HttpRequest) -> HttpResponse:
    """What `/` shows (the admin's "View site" and the start-up banner point here)."""
    return render(
        request,
        "taskq/index.html",
        {
            "admin_url": reverse("admin:index"),
            "docs_url": reverse("docs"),
            "redoc_url": reverse("redoc"),
            "schema_url": reverse("schema"),
            "healthz_url": reverse("healthz"),
        },
    )


def healthz(request: HttpRequest) -> JsonResponse:
    """Open health check, answered within a few seconds whatever the database does.

    503 when the database does not answer (`Retry-After` set). Otherwise 200,
    with `status` "degraded" when the lease sweeper has not run for three
    intervals: the API still works, but operators should look. Until this
    process has been up for three intervals, that is "starting" instead.
    """
    problem = probe_database()
    if problem is None:
        try:
            sweeper = sweeper_health(interval_seconds=settings.TASKQ_SWEEP_SECONDS)
        except DatabaseError as exc:
            problem = f"query failed ({exc.__class__.__name__})"
    if problem is not None:
        response = JsonResponse(
            {"status": "down", "database": {"ok": False, "error": problem}}, status=503
        )
        response["Retry-After"] = "5"
        return response
    if sweeper["ok"]:
        status = "ok"
    elif time.monotonic() - _STARTED < 3 * settings.TASKQ_SWEEP_SECONDS:
        status = "starting"
    else:
        status = "degraded"
    return JsonResponse(
        {
            "status": status,
            "database": {"ok": True},
            "sweeper": sweeper,
        }
    )


def metrics(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`: the Prometheus text format (tasks_app.metrics).

    Open unless TASKQ_METRICS_TOKEN is set; then only `Authorization: Bearer
    <that token>` is answered, compared in constant time.
    """
    token = settings.TASKQ_METRICS_TOKEN
    if token and not constant_time_compare(
        request.headers.get("Authorization", ""), f"Bearer {token}"
    ):
        return JsonResponse(
            {"detail": "The metrics need Authorization: Bearer <TASKQ_METRICS_TOKEN>."},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskqCollector())
    http_metrics.register(registry)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
