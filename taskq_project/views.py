from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from rest_framework.exceptions import ValidationError

from taskq_project.ids import id_problem
from tasks_app.sweeper import sweeper_health


def validated_path_id(value: str) -> str:
    """An id taken from the URL path, refused with a 400 when no id could have it."""
    problem = id_problem(value)
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
