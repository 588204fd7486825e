import re

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from rest_framework.exceptions import ValidationError

from taskq_project.ids import id_problem
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


def healthz(request: HttpRequest) -> JsonResponse:
    """Open health check.

    503 when the database does not answer. Otherwise 200, with `status`
    "degraded" when the lease sweeper has not run for three intervals: the
    API still works, but operators should look.
    """
    try:
        sweeper = sweeper_health(interval_seconds=settings.TASKQ_SWEEP_SECONDS)
    except DatabaseError as exc:
        return JsonResponse(
            {"status": "down", "database": {"ok": False, "error": exc.__class__.__name__}},
            status=503,
        )
    return JsonResponse(
        {
            "status": "ok" if sweeper["ok"] else "degraded",
            "database": {"ok": True},
            "sweeper": sweeper,
        }
    )
