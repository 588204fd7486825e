"""OpenAPI description of the v1 API (drf-spectacular).

The views render plain dicts for speed; the serializers here describe those
shapes for the schema only. Every operation declares the error answers it can
give, with the error body, so schemathesis can hold the running API to it.
"""

import re
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers

from namespaces_app.models import History
from namespaces_app.serializers import BACKOFF_SECONDS_SCHEMA, backoff_kind_schema
from taskq_project.ids import ID_SCHEMA, MAX_ID_LENGTH
from tasks_app.models import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MAX_INT,
    MAX_PRIORITY,
    MIN_PRIORITY,
    RESERVED_TASK_ID_SUFFIXES,
    RESERVED_TASK_IDS,
    TaskStatus,
)
from tasks_app.pagination import MAX_PAGE_SIZE
from tasks_app.serializers import (
    DELAYABLE_STATUSES,
    MAX_PAYLOAD_BYTES,
    MAX_UNIX_SECONDS,
)


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What is wrong, for a person.")
    code = serializers.CharField(help_text="A stable machine-readable code.")
    errors = serializers.JSONField(  # type: ignore[assignment]
        required=False, help_text="Validation errors by field (validation errors only)."
    )


class NamespaceListItemSerializer(serializers.Serializer):
    """A namespace in the list: its id only (its settings are on its GET)."""

    id = serializers.CharField(max_length=MAX_ID_LENGTH, min_length=1)


@extend_schema_field(
    {
        "description": "How long the retry of a failed or expired attempt waits.",
        "oneOf": [
            {
                "type": "object",
                "required": ["kind"],
                "additionalProperties": False,
                "properties": {"kind": backoff_kind_schema("none")},
                "description": "No backoff: a retry is due at once.",
            },
            {
                "type": "object",
                "required": ["kind", "base", "max", "jitter"],
                "additionalProperties": False,
                "properties": {
                    "kind": backoff_kind_schema("exponential"),
                    "base": {**BACKOFF_SECONDS_SCHEMA, "description": "Seconds."},
                    "max": {**BACKOFF_SECONDS_SCHEMA, "description": "Seconds, at least `base`."},
                    "jitter": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "description": "Attempt n's retry waits min(max, base * 2^(n-1)) seconds, "
                "less a random share of up to `jitter` of that.",
            },
        ],
    },
    component_name="RetryBackoff",
)
class RetryBackoffField(serializers.JSONField):
    pass


class NamespaceSerializer(serializers.Serializer):
    """A namespace with its settings (read, registration and change answers)."""

    id = serializers.CharField(max_length=MAX_ID_LENGTH, min_length=1)
    default_timeout = serializers.IntegerField(
        min_value=1,
        max_value=MAX_INT,
        allow_null=True,
        help_text=f"Seconds, for tasks registered without `timeout`; null: {DEFAULT_TIMEOUT}.",
    )
    default_retries = serializers.IntegerField(
        min_value=0,
        max_value=MAX_INT,
        allow_null=True,
        help_text=f"For tasks registered without `retries_left`; null: {DEFAULT_RETRIES}.",
    )
    retry_backoff = RetryBackoffField()
    history = serializers.ChoiceField(
        choices=History.values,
        help_text="Which ended attempts are kept: failures only, or all (done ones too).",
    )
    max_in_flight = serializers.IntegerField(
        min_value=1,
        max_value=MAX_INT,
        allow_null=True,
        help_text="At most this many valid leases at once in the namespace; null: no limit.",
    )
    paused = serializers.BooleanField(
        help_text="Paused by an operator: captures lease nothing until it is resumed."
    )
    paused_at = serializers.IntegerField(
        allow_null=True, help_text="Since when it is paused (unix seconds); null when it is not."
    )


class _CountsSerializer(serializers.Serializer):
    idle = serializers.IntegerField(help_text="Capturable now.")
    scheduled = serializers.IntegerField(help_text="Idle or failed, their turn still to come.")
    in_progress = serializers.IntegerField(help_text="Leased, the lease still valid.")
    lease_expired = serializers.IntegerField(help_text="Leased, the lease past its end.")
    done = serializers.IntegerField()
    failed_retry = serializers.IntegerField(help_text="Failed, with retries left.")
    failed_final = serializers.IntegerField(help_text="Failed for good.")


class _FinishedSerializer(serializers.Serializer):
    captured = serializers.IntegerField(help_text="Tasks leased.")
    done = serializers.IntegerField(help_text="Leases released done (or marked so).")
    failed = serializers.IntegerField(help_text="Leases released failed (or marked so).")
    expired = serializers.IntegerField(help_text="Leases that ran out.")


class _ThroughputSerializer(serializers.Serializer):
    last_5_minutes = _FinishedSerializer()
    last_60_minutes = _FinishedSerializer()


class NamespaceStatsSerializer(serializers.Serializer):
    """A namespace at a glance."""

    id = serializers.CharField(max_length=MAX_ID_LENGTH, min_length=1)
    paused = serializers.BooleanField()
    max_in_flight = serializers.IntegerField(allow_null=True)
    counts = _CountsSerializer(help_text="Tasks per state.")
    estimated = serializers.ListField(
        child=serializers.CharField(),
        help_text="The states whose count is the planner's estimate (above 100,000 rows).",
    )
    oldest_idle_age_seconds = serializers.FloatField(
        allow_null=True, help_text="How long the oldest capturable task has waited; null: none."
    )
    in_flight = serializers.IntegerField(help_text="Valid leases: in progress, not expired.")
    throughput = _ThroughputSerializer(
        help_text="Tasks captured and leases ended, from the throughput log (to the minute)."
    )


class PurgedSerializer(serializers.Serializer):
    """What a purge deleted."""

    id = serializers.CharField(max_length=MAX_ID_LENGTH, min_length=1)
    deleted = serializers.IntegerField(help_text="Tasks deleted, in all.")
    by_state = serializers.DictField(
        child=serializers.IntegerField(), help_text="Tasks deleted per state named."
    )


# many=False: these already are the list envelopes (`{"list": [...]}`), which
# drf-spectacular would otherwise wrap in an array (or a pagination envelope).
@extend_schema_serializer(many=False)
class NamespaceListSerializer(serializers.Serializer):
    list = NamespaceListItemSerializer(many=True)


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
    priority = serializers.IntegerField(
        min_value=MIN_PRIORITY, max_value=MAX_PRIORITY, help_text="Lower numbers go out first."
    )
    available_at = serializers.IntegerField(
        allow_null=True,
        help_text="Unix seconds when the task is capturable next: its turn, or when its "
        "lease's retry is due; null when never (done; failed, or leased, with no retries "
        "left).",
    )


def _json_value(help_text: str, **kwargs: Any) -> serializers.JSONField:
    """Any JSON value, null included."""
    return serializers.JSONField(allow_null=True, help_text=help_text, **kwargs)


class TaskDetailSerializer(TaskSerializer):
    """A task as `GET /v1/task/{id}` shows it: with its payload and latest outcome."""

    payload = _json_value("As registered; null when none.")
    result = _json_value("The latest done release's result; null when none.")
    last_error = _json_value("The latest error a failed or idle release gave; null when none.")


class ListedTaskSerializer(TaskSerializer):
    """A task in a list: `payload` only when asked for (`?fields=payload`)."""

    payload = _json_value(
        "As registered; null when none. Only with `?fields=payload`.", required=False
    )


class LeasedTaskSerializer(TaskSerializer):
    lease_token = serializers.CharField(
        help_text="The lease's fence: new at every capture, shown only to its holder. "
        "Release and extend with it (`leases`)."
    )


class CapturedTaskSerializer(LeasedTaskSerializer):
    """A task as capture leases it: with its token and its payload."""

    payload = _json_value("As registered; null when none.")


@extend_schema_serializer(many=False)
class TaskListSerializer(serializers.Serializer):
    list = ListedTaskSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next page, or null.")


class CapturedSerializer(serializers.Serializer):
    list = CapturedTaskSerializer(many=True)


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
    attempt = serializers.IntegerField(min_value=1, help_text="1 for the first capture.")
    captured_at = serializers.IntegerField(
        allow_null=True, help_text="Unix seconds; null when not recorded."
    )
    ended_at = serializers.IntegerField(
        allow_null=True, help_text="Unix seconds; null while in progress."
    )
    outcome = serializers.ChoiceField(
        choices=["in_progress", "done", "failed", "handed_back", "expired", "cancelled"],
        help_text="handed_back: released as idle; expired: the lease ran out; cancelled: "
        "ended by an operator.",
    )
    error = _json_value("The error its release gave; null when none.")  # type: ignore[assignment]
    result = _json_value("The result its done release gave; null when none.")
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
WAIT_QUERY = OpenApiParameter(
    "wait",
    {"type": "integer", "minimum": 0, "maximum": 20, "default": 0},
    OpenApiParameter.QUERY,
    description="Long polling: when nothing can be leased at once, wait up to this many "
    "seconds for a task to become capturable (registered, handed back, due, or a lease "
    "expiring) and lease it then; an empty list after that.",
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
    OpenApiParameter(
        "fields",
        str,
        OpenApiParameter.QUERY,
        description="Extra fields of each task, comma-separated: `payload` adds the "
        "payload. Other names are ignored.",
        examples=[OpenApiExample("With payloads", value="payload")],
    ),
]

# What TaskIdField refuses beyond any id: the names of endpoints under /v1/task/.
_TASK_ID = {
    **ID_SCHEMA,
    "not": {
        "anyOf": [
            {"enum": sorted(RESERVED_TASK_IDS)},
            *({"pattern": f"{re.escape(suffix)}$"} for suffix in RESERVED_TASK_ID_SUFFIXES),
        ]
    },
}
# Neither hold (`available_at`, `delay`), or exactly one, which only an idle or
# failed task takes (TaskCreateSerializer.validate).
_ABSENT: dict[str, Any] = {"not": {}}
_HOLDS = [
    {"properties": {"available_at": _ABSENT, "delay": _ABSENT}},
    *(
        {
            "required": [held],
            "properties": {
                other: _ABSENT,
                "status": {"type": "string", "enum": [str(s) for s in DELAYABLE_STATUSES]},
            },
        }
        for held, other in (("available_at", "delay"), ("delay", "available_at"))
    ),
]
_NEW_TASK = {
    "type": "object",
    "required": ["id", "namespace_id"],
    "additionalProperties": False,
    "properties": {
        "id": {
            **_TASK_ID,
            "description": "Not `capture`, `release` or `extend`, nor ending with `/attempts`.",
        },
        "namespace_id": ID_SCHEMA,
        "timeout": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_INT,
            "description": "Seconds. Default: the namespace's `default_timeout`, "
            f"else {DEFAULT_TIMEOUT}.",
        },
        "retries_left": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_INT,
            "description": f"Default: the namespace's `default_retries`, else {DEFAULT_RETRIES}.",
        },
        "status": {"type": "string", "enum": TaskStatus.values, "default": "idle"},
        "priority": {
            "type": "integer",
            "minimum": MIN_PRIORITY,
            "maximum": MAX_PRIORITY,
            "default": 0,
            "description": "Capture leases lower numbers first.",
        },
        "payload": {
            "nullable": True,
            "description": "Any JSON value (null: none) with no `\\u0000` in a string or "
            f"key (jsonb holds none), at most {MAX_PAYLOAD_BYTES:,} bytes as compact JSON.",
        },
        "available_at": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_UNIX_SECONDS,
            "description": "Unix seconds: not capturable before then. Not with `delay`; "
            "only for an idle or failed task.",
        },
        "delay": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_INT,
            "description": "Seconds from now: not capturable before then. Not with "
            "`available_at`; only for an idle or failed task.",
        },
    },
    "anyOf": _HOLDS,
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
REGISTRATION_EXAMPLES = [
    OpenApiExample(
        "A task with a payload, urgent, in ten minutes",
        value={
            "id": "resize-42",
            "namespace_id": "Images",
            "payload": {"src": "s3://b/42.png", "w": 640},
            "priority": 0,
            "delay": 600,
        },
        request_only=True,
    ),
    OpenApiExample(
        "Two tasks, one at a given time",
        value=[
            {"id": "report-nov", "namespace_id": "Reports"},
            {"id": "report-dec", "namespace_id": "Reports", "available_at": 1767225600},
        ],
        request_only=True,
    ),
]

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
        request_only=True,
    ),
    OpenApiExample(
        "Release by id (the seed's form)",
        value={"status": "done", "task_ids": ["Backup_Test_Shards1-10"]},
        request_only=True,
    ),
    OpenApiExample(
        "Done, with a result",
        value={
            "status": "done",
            "leases": [
                {
                    "id": "resize-42",
                    "lease_token": "6f1c2a9e-0d3b-4f5e-8a7c-1b2d3e4f5a6b",
                    "result": {"bytes": 18230},
                }
            ],
        },
        request_only=True,
    ),
    OpenApiExample(
        "Failed, with an error and a wait before the retry",
        value={
            "status": "failed",
            "leases": [{"id": "resize-42", "lease_token": "6f1c2a9e-0d3b-4f5e-8a7c-1b2d3e4f5a6b"}],
            "error": {"type": "Timeout", "msg": "s3 read"},
            "retry_after": 120,
        },
        request_only=True,
    ),
]

_SETTINGS_EXAMPLE = {
    "default_timeout": 60,
    "retry_backoff": {"kind": "exponential", "base": 5, "max": 3600, "jitter": 0.2},
}
NAMESPACE_REGISTRATION_EXAMPLES = [
    OpenApiExample("With settings", value={"id": "Images", **_SETTINGS_EXAMPLE}, request_only=True),
]
NAMESPACE_CHANGE_EXAMPLES = [
    OpenApiExample(
        "Defaults and an exponential backoff", value=_SETTINGS_EXAMPLE, request_only=True
    ),
    OpenApiExample("No backoff", value={"retry_backoff": {"kind": "none"}}, request_only=True),
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
        release = schemas["ReleaseRequest"]
        # Exactly one of the two forms: the seed's task_ids, or leases.
        release["oneOf"] = [{"required": ["task_ids"]}, {"required": ["leases"]}]
        # A done release may carry results, a failed or idle one errors and
        # retry_after, for the batch or (results, errors) per lease; nothing
        # else (ReleaseSerializer.validate).
        release["anyOf"] = [
            {
                "properties": {
                    "status": {"type": "string", "enum": ["done"]},
                    "error": _ABSENT,
                    "retry_after": _ABSENT,
                    "leases": {"items": {"properties": {"error": _ABSENT}}},
                }
            },
            {
                "properties": {
                    "status": {"type": "string", "enum": ["failed", "idle"]},
                    "result": _ABSENT,
                    "leases": {"items": {"properties": {"result": _ABSENT}}},
                }
            },
        ]
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
