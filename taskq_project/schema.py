"""OpenAPI description of the v1 API (drf-spectacular).

The views render plain dicts for speed; the serializers here describe those
shapes for the schema only. Every operation declares the error answers it can
give, with the error body, so schemathesis can hold the running API to it.
"""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema_serializer,
)
from rest_framework import serializers

from taskq_project.ids import ID_SCHEMA, MAX_ID_LENGTH
from tasks_app.models import MAX_INT, TaskStatus
from tasks_app.pagination import MAX_PAGE_SIZE


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What is wrong, for a person.")
    code = serializers.CharField(help_text="A stable machine-readable code.")
    errors = serializers.JSONField(  # type: ignore[assignment]
        required=False, help_text="Validation errors by field (validation errors only)."
    )


class NamespaceSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=MAX_ID_LENGTH, min_length=1)


# many=False: these already are the list envelopes (`{"list": [...]}`), which
# drf-spectacular would otherwise wrap in an array (or a pagination envelope).
@extend_schema_serializer(many=False)
class NamespaceListSerializer(serializers.Serializer):
    list = NamespaceSerializer(many=True)


class TaskSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=MAX_ID_LENGTH, min_length=1)
    namespace_id = serializers.CharField(max_length=MAX_ID_LENGTH, min_length=1)
    timeout = serializers.IntegerField(min_value=1, max_value=MAX_INT, help_text="Seconds.")
    retries_left = serializers.IntegerField(min_value=0, max_value=MAX_INT)
    updated_at = serializers.IntegerField(help_text="Unix seconds.")
    status = serializers.ChoiceField(choices=TaskStatus.values)
    lease_expires_at = serializers.IntegerField(
        allow_null=True, help_text="Unix seconds when the current lease ends; null if none."
    )
    attempt = serializers.IntegerField(
        min_value=0, help_text="How many times the task has been captured (1 on its first lease)."
    )


class LeasedTaskSerializer(TaskSerializer):
    lease_token = serializers.CharField(
        help_text="The lease's fence: new at every capture, shown only to its holder. "
        "Release and extend with it (`leases`)."
    )


@extend_schema_serializer(many=False)
class TaskListSerializer(serializers.Serializer):
    list = TaskSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next page, or null.")


class CapturedSerializer(serializers.Serializer):
    list = LeasedTaskSerializer(many=True)


class RegisteredListSerializer(serializers.Serializer):
    """A list registration's answer: the tasks as stored (no lease tokens)."""

    list = TaskSerializer(many=True)


class ReleaseErrorSerializer(serializers.Serializer):
    id = serializers.CharField()
    code = serializers.ChoiceField(
        choices=["not_found", "not_in_progress", "stale_lease"],
        help_text="not_found: no such task; not_in_progress: the task is not leased (your "
        "lease was released or reclaimed); stale_lease: the token is not the task's latest "
        "lease (captured again since, or ended by an operator).",
    )
    detail = serializers.CharField()


class ReleasedSerializer(serializers.Serializer):
    list = TaskSerializer(many=True)
    errors = ReleaseErrorSerializer(many=True)  # type: ignore[assignment]


class AttemptSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1)
    captured_at = serializers.IntegerField(allow_null=True, help_text="Unix seconds.")
    ended_at = serializers.IntegerField(
        allow_null=True, help_text="Unix seconds; null while in progress."
    )
    outcome = serializers.ChoiceField(
        choices=["in_progress", "done", "failed", "handed_back", "expired", "cancelled"]
    )
    error = serializers.JSONField(allow_null=True)  # type: ignore[assignment]
    result = serializers.JSONField(allow_null=True)
    leased_by = serializers.CharField(
        allow_null=True, help_text="The name of the API token that held the lease."
    )


@extend_schema_serializer(many=False)
class AttemptListSerializer(serializers.Serializer):
    list = AttemptSerializer(many=True)


class ExtendedSerializer(serializers.Serializer):
    list = LeasedTaskSerializer(many=True)
    errors = ReleaseErrorSerializer(many=True)  # type: ignore[assignment]


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    """The error answers an operation can give: those named plus the common ones."""
    descriptions = {
        400: "The request is malformed; nothing changed.",
        401: "No valid token (Authorization: Bearer <token>).",
        403: "The token's role may not do this.",
        404: "No such id.",
        405: "Method not allowed.",
        406: "Only application/json can be answered.",
        409: "The id is already registered.",
        413: "The request body is too large.",
        415: "The body must be application/json.",
        429: "Too many requests for this token; see Retry-After.",
    }
    common = {400, 401, 403, 405, 406, 429}
    answers = {
        code: OpenApiResponse(ErrorSerializer, description=descriptions[code])
        for code in sorted(common | set(codes))
    }
    # Answered before Django sees the request (taskq_project.asgi).
    answers[414] = OpenApiResponse(
        ErrorSerializer, description="The path and query string are over 8,190 bytes."
    )
    return answers


def id_path(description: str) -> OpenApiParameter:
    return OpenApiParameter(
        "id",
        ID_SCHEMA,
        OpenApiParameter.PATH,
        description=f"{description} Percent-encode it (e.g. `/` as `%2F`).",
    )


NAMESPACE_ID_QUERY = OpenApiParameter(
    "namespace_id", ID_SCHEMA, OpenApiParameter.QUERY, required=True, description="The namespace."
)
LIMIT_QUERY = OpenApiParameter(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
    OpenApiParameter.QUERY,
    description="How many tasks to lease at most.",
)
LIST_PARAMETERS = [
    OpenApiParameter(
        "namespace_id",
        ID_SCHEMA,
        OpenApiParameter.QUERY,
        description="Only this namespace's tasks.",
    ),
    OpenApiParameter(
        "status",
        str,
        OpenApiParameter.QUERY,
        enum=TaskStatus.values,
        many=True,
        description="Only tasks in these statuses (repeatable).",
    ),
    OpenApiParameter(
        "page_size",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": 100},
        OpenApiParameter.QUERY,
        description="Tasks per page.",
    ),
    OpenApiParameter(
        "cursor",
        {"type": "string", "minLength": 1},
        OpenApiParameter.QUERY,
        description="From a previous page's `next`.",
    ),
]

_NEW_TASK = {
    "type": "object",
    "required": ["id", "namespace_id"],
    "additionalProperties": False,
    "properties": {
        "id": ID_SCHEMA,
        "namespace_id": ID_SCHEMA,
        "timeout": {"type": "integer", "minimum": 1, "maximum": MAX_INT, "default": 300},
        "retries_left": {"type": "integer", "minimum": 0, "maximum": MAX_INT, "default": 3},
        "status": {"type": "string", "enum": TaskStatus.values, "default": "idle"},
    },
}
# One task object, or a list of up to 1,000 registered together.
TASK_REGISTRATION = {
    "application/json": {
        # anyOf, not oneOf: an object and an array never both match anyway.
        "anyOf": [
            _NEW_TASK,
            {"type": "array", "items": _NEW_TASK, "minItems": 1, "maxItems": 1000},
        ]
    }
}

RELEASE_EXAMPLES = [
    OpenApiExample(
        "Fenced release",
        value={
            "status": "done",
            "leases": [
                {
                    "id": "Backup_Test_Shards1-10",
                    "lease_token": "0b7f6c1e-1f7e-4a43-9d0c-5a1d2e3f4a5b",
                }
            ],
        },
    ),
    OpenApiExample(
        "Release by id (the seed's form)",
        value={"status": "done", "task_ids": ["Backup_Test_Shards1-10"]},
    ),
]


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "apikeys_app.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API token."}


def strict_request_bodies(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: request bodies refuse unknown fields, as the API does.

    Every input serializer is a StrictSerializer; without this the schema would
    allow bodies that the server rightly refuses.
    """
    schemas = result.get("components", {}).get("schemas", {})
    for name, component in schemas.items():
        if name.endswith("Request") and component.get("type") == "object":
            component["additionalProperties"] = False
    if "ReleaseRequest" in schemas:
        # Exactly one of the two forms: the seed's task_ids, or leases.
        schemas["ReleaseRequest"]["oneOf"] = [{"required": ["task_ids"]}, {"required": ["leases"]}]
    return result


def seed_paths(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: name paths as the seed does, without a trailing slash.

    Every endpoint answers both ways; the router's optional slash would
    otherwise come out as a required one.
    """
    result["paths"] = {
        (path.rstrip("/") if path != "/" else path): item for path, item in result["paths"].items()
    }
    return result
