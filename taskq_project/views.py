from django.db import connection
from django.http import HttpRequest, JsonResponse
from rest_framework.exceptions import ValidationError

from taskq_project.ids import id_problem


def validated_path_id(value: str) -> str:
    """An id taken from the URL path, refused with a 400 when no id could have it."""
    problem = id_problem(value)
    if problem is not None:
        raise ValidationError({"id": [f"Id {problem}."]})
    return value


def healthz(request: HttpRequest) -> JsonResponse:
    """Open health check: 200 when the database answers, 503 when it does not."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure to reach the database is "down"
        return JsonResponse(
            {"status": "down", "database": {"ok": False, "error": exc.__class__.__name__}},
            status=503,
        )
    return JsonResponse({"status": "ok", "database": {"ok": True}})
