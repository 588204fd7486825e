"""Input validation for the task endpoints; rendering lives in `render_task`.

Lease fields (`updated_at`, `lease_expires_at`) are never writable: they only
change through capture and release.
"""

from datetime import UTC, datetime
from typing import Any

import orjson
from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from namespaces_app.serializers import NumberField
from taskq_project.api import IdField, StrictIntegerField, StrictSerializer
from tasks_app import lease
from tasks_app.models import (
    MAX_INT,
    MAX_PRIORITY,
    MIN_PRIORITY,
    RESERVED_TASK_ID_SUFFIXES,
    RESERVED_TASK_IDS,
    TaskStatus,
)
from tasks_app.services import (
    MAX_BATCH,
    MAX_EXTEND_SECONDS,
    RELEASE_STATUSES,
    Lease,
    NewTask,
    Outcome,
)
from tasks_app.waiting import MAX_WAIT_SECONDS

# Serialized (compact JSON, UTF-8) sizes.
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_RESULT_BYTES = 64 * 1024
MAX_ERROR_BYTES = 8 * 1024
# The last second PostgreSQL and Python both hold: 9999-12-31 23:59:59 UTC.
MAX_UNIX_SECONDS = 253_402_300_799
# Statuses whose task can wait for a turn (a delay means nothing for the rest).
DELAYABLE_STATUSES = (TaskStatus.IDLE, TaskStatus.FAILED)


class TaskIdField(IdField):
    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if value in RESERVED_TASK_IDS:
            raise serializers.ValidationError(
                f"{value!r} is reserved (it names an endpoint under /v1/task/)."
            )
        for suffix in RESERVED_TASK_ID_SUFFIXES:
            if value.endswith(suffix):
                raise serializers.ValidationError(
                    f"An id must not end with {suffix!r} (/v1/task/{{id}}{suffix} is an endpoint)."
                )
        return value


def _json_help(max_bytes: int) -> str:
    """What a JSONValueField takes, for the OpenAPI schema."""
    return (
        f"Any JSON value with no \\u0000 in a string or key, at most {max_bytes:,} bytes "
        "as compact JSON"
    )


def _holds_nul(value: Any) -> bool:
    """Whether a JSON value has U+0000 in a string or a key, anywhere in it."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


class JSONValueField(serializers.JSONField):
    """Any JSON value (null included), at most `max_bytes` serialized."""

    def __init__(self, *, max_bytes: int, **kwargs: Any) -> None:
        self.max_bytes = max_bytes
        kwargs.setdefault("help_text", f"{_json_help(max_bytes)}.")
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        try:
            size = len(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError) as exc:
            # An integer beyond 64 bits, for one: not storable as given.
            raise serializers.ValidationError(f"Not storable as JSON: {exc}.") from None
        if size > self.max_bytes:
            raise serializers.ValidationError(
                f"At most {self.max_bytes} bytes as compact JSON (got {size})."
            )
        # jsonb refuses the whole statement over one (PostgreSQL stores text
        # without NUL): refused here, as the bad input it is, not a 500.
        if _holds_nul(value):
            raise serializers.ValidationError(
                "Not storable as JSON: PostgreSQL's jsonb holds no \\u0000 in a string or key."
            )
        return value


def _error_field(**kwargs: Any) -> JSONValueField:
    return JSONValueField(max_bytes=MAX_ERROR_BYTES, **kwargs)


class TaskCreateSerializer(StrictSerializer):
    id = TaskIdField()
    namespace_id = IdField()
    # Not given: the namespace's default, else 300 s and 3.
    timeout = StrictIntegerField(min_value=1, max_value=MAX_INT, required=False)
    retries_left = StrictIntegerField(min_value=0, max_value=MAX_INT, required=False)
    status = serializers.ChoiceField(choices=TaskStatus.values, default=TaskStatus.IDLE)
    priority = StrictIntegerField(min_value=MIN_PRIORITY, max_value=MAX_PRIORITY, default=0)
    payload = JSONValueField(max_bytes=MAX_PAYLOAD_BYTES, required=False, allow_null=True)
    available_at = StrictIntegerField(min_value=0, max_value=MAX_UNIX_SECONDS, required=False)
    delay = StrictIntegerField(min_value=0, max_value=MAX_INT, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "available_at" in attrs and "delay" in attrs:
            raise serializers.ValidationError({"delay": ["Give available_at or delay, not both."]})
        held = "available_at" if "available_at" in attrs else "delay" if "delay" in attrs else None
        if held and attrs.get("status", TaskStatus.IDLE) not in DELAYABLE_STATUSES:
            raise serializers.ValidationError(
                {held: [f"Only an idle or failed task can wait (status is {attrs['status']})."]}
            )
        return attrs

    def to_new_task(self) -> NewTask:
        data = dict(self.validated_data)
        if "available_at" in data:
            data["available_at"] = datetime.fromtimestamp(data["available_at"], UTC)
        return NewTask(**data)


MAX_LEASE_TOKEN_LENGTH = 64


@extend_schema_field(
    {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_LEASE_TOKEN_LENGTH,
        # No control characters (NUL included), as the server checks.
        "pattern": "^[^\\x00-\\x1f\\x7f]+$",
    }
)
class LeaseTokenField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            min_length=1, max_length=MAX_LEASE_TOKEN_LENGTH, trim_whitespace=False, **kwargs
        )

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise serializers.ValidationError("A lease token has no control characters.")
        return value


class LeaseSerializer(StrictSerializer):
    id = IdField()
    lease_token = LeaseTokenField()

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and not isinstance(data.get("lease_token", ""), str):
            # CharField would take 123 for "123"; a token is never a number.
            raise serializers.ValidationError({"lease_token": ["Must be a string."]})
        return super().to_internal_value(data)


class ReleasedLeaseSerializer(LeaseSerializer):
    """A lease being released, with what it came to (its status allowing)."""

    result = JSONValueField(
        max_bytes=MAX_RESULT_BYTES,
        required=False,
        allow_null=True,
        help_text=f"Done only. {_json_help(MAX_RESULT_BYTES)} (instead of the batch's).",
    )
    error = _error_field(
        required=False,
        allow_null=True,
        help_text=f"Failed or idle only. {_json_help(MAX_ERROR_BYTES)} (instead of the batch's).",
    )


class LeaseListField(serializers.ListField):
    """Up to 1,000 leases; one id given twice must carry the same token."""

    def __init__(self, *, released: bool = False, **kwargs: Any) -> None:
        # min_length and max_length as well, so that the schema states them.
        super().__init__(
            child=ReleasedLeaseSerializer() if released else LeaseSerializer(),
            allow_empty=False,
            min_length=1,
            max_length=MAX_BATCH,
            **kwargs,
        )

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        if isinstance(data, list) and len(data) > MAX_BATCH:
            raise serializers.ValidationError(
                f"At most {MAX_BATCH} leases per call (got {len(data)})."
            )
        items = super().to_internal_value(data)
        tokens: dict[str, str] = {}
        for item in items:
            if tokens.setdefault(item["id"], item["lease_token"]) != item["lease_token"]:
                raise serializers.ValidationError(
                    f"Task {item['id']!r} is given twice with different lease tokens."
                )
        return items


def _leases(items: list[dict[str, Any]]) -> list[Lease]:
    return [Lease(item["id"], item["lease_token"]) for item in items]


class ReleaseSerializer(StrictSerializer):
    """The seed's `{"status", "task_ids"}`, or the fenced `{"status", "leases"}`."""

    status = serializers.ChoiceField(choices=[str(s) for s in RELEASE_STATUSES])
    task_ids = serializers.ListField(
        child=IdField(), allow_empty=False, min_length=1, max_length=MAX_BATCH, required=False
    )
    leases = LeaseListField(released=True, required=False)
    # For every task of the batch, unless its lease gives its own.
    result = JSONValueField(
        max_bytes=MAX_RESULT_BYTES,
        required=False,
        allow_null=True,
        help_text=f"Done only. {_json_help(MAX_RESULT_BYTES)}, for every lease that gives none "
        "of its own.",
    )
    error = _error_field(
        required=False,
        allow_null=True,
        help_text=f"Failed or idle only. {_json_help(MAX_ERROR_BYTES)}, for every lease that "
        "gives none of its own.",
    )
    retry_after = StrictIntegerField(
        min_value=0,
        max_value=MAX_INT,
        required=False,
        help_text="Failed or idle only. Seconds before the task is capturable again "
        "(instead of the namespace's backoff).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        status = attrs["status"]
        given = [attrs, *attrs.get("leases", [])]
        where = {"result": "done", "error": "failed or idle", "retry_after": "failed or idle"}
        allowed = {"result": status == "done", "error": status != "done"}
        allowed["retry_after"] = allowed["error"]
        for field_name, ok in allowed.items():
            if not ok and any(field_name in item for item in given):
                raise serializers.ValidationError(
                    {field_name: [f"Only a {where[field_name]} release carries {field_name}."]}
                )
        return attrs

    def release_arguments(self) -> dict[str, Any]:
        """The keyword arguments of `services.release_tasks`."""
        data = self.validated_data
        batch = Outcome(result=data.get("result"), error=data.get("error"))
        arguments: dict[str, Any] = {
            "status": data["status"],
            "retry_after": data.get("retry_after"),
        }
        if "task_ids" in data:
            arguments["task_ids"] = data["task_ids"]
            ids = data["task_ids"]
            own: dict[str, Outcome] = {}
        else:
            arguments["leases"] = _leases(data["leases"])
            ids = [item["id"] for item in data["leases"]]
            own = {
                item["id"]: Outcome(
                    result=item.get("result", batch.result), error=item.get("error", batch.error)
                )
                for item in data["leases"]
                if "result" in item or "error" in item
            }
        if batch != Outcome() or own:
            arguments["outcomes"] = {task_id: own.get(task_id, batch) for task_id in ids}
        return arguments

    def to_internal_value(self, data: Any) -> Any:
        # Check the batch size before validating each id of an oversized list.
        if isinstance(data, dict) and isinstance(data.get("task_ids"), list):
            if len(data["task_ids"]) > MAX_BATCH:
                raise serializers.ValidationError(
                    {
                        "task_ids": [
                            f"At most {MAX_BATCH} ids per release (got {len(data['task_ids'])})."
                        ]
                    }
                )
        if isinstance(data, dict) and "task_ids" in data and "leases" in data:
            raise serializers.ValidationError(
                {"non_field_errors": ["Give either task_ids or leases, not both."]}
            )
        if isinstance(data, dict) and "task_ids" in data and settings.TASKQ_REQUIRE_LEASE_TOKEN:
            raise serializers.ValidationError(
                {
                    "task_ids": [
                        "This server requires lease tokens: send "
                        '{"status": ..., "leases": [{"id": ..., "lease_token": ...}]} '
                        "with the lease_token each task had in the capture answer."
                    ]
                }
            )
        missing = isinstance(data, dict) and "task_ids" not in data and "leases" not in data
        # Keyed by task_ids, beside any other field's error, as before leases existed.
        missing_error = {
            "task_ids": [
                "This field is required, unless leases ([{id, lease_token}, ...], "
                "as capture answered them) are given."
            ]
        }
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as error:
            if missing and isinstance(error.detail, dict):
                error.detail.update(missing_error)  # type: ignore[arg-type]
            raise
        if missing:
            raise serializers.ValidationError(missing_error)
        return value


class ExtendSerializer(StrictSerializer):
    leases = LeaseListField()
    timeout = StrictIntegerField(min_value=1, max_value=MAX_EXTEND_SECONDS, required=False)

    def extend_arguments(self) -> dict[str, Any]:
        data = self.validated_data
        return {"leases": _leases(data["leases"]), "timeout": data.get("timeout")}


class CaptureSerializer(StrictSerializer):
    namespace_id = IdField()
    limit = serializers.IntegerField(min_value=1, max_value=MAX_BATCH, default=1)
    # Long polling: the web server waits (tasks_app.waiting); Django checks it.
    wait = serializers.IntegerField(min_value=0, max_value=MAX_WAIT_SECONDS, default=0)

    def to_internal_value(self, data: Any) -> Any:
        # Query strings carry text: accept "10" but not "10.0", " 10" or "1e1".
        for name, most in (("limit", MAX_BATCH), ("wait", MAX_WAIT_SECONDS)):
            value = data.get(name) if hasattr(data, "get") else None
            if (isinstance(value, str) and not (value.isascii() and value.isdigit())) or (
                isinstance(value, bool) or isinstance(value, float)
            ):
                least = 1 if name == "limit" else 0
                raise serializers.ValidationError(
                    {name: [f"A whole number from {least} to {most} is required."]}
                )
        return super().to_internal_value(data)

    def capture_arguments(self) -> dict[str, Any]:
        data = self.validated_data
        return {"namespace_id": data["namespace_id"], "limit": data["limit"]}


# Ten years: long enough for any retention, short enough for an interval.
MAX_PURGE_AGE_SECONDS = 10 * 365 * 86_400


class PurgeSerializer(StrictSerializer):
    """`POST /v1/namespace/{id}/purge`: which tasks to delete."""

    states = serializers.ListField(
        child=serializers.ChoiceField(choices=list(lease.PUBLIC_CATEGORY)),
        min_length=1,
        help_text='The states whose tasks are deleted, e.g. ["done", "failed_final"].',
    )
    older_than = NumberField(
        min_value=0,
        max_value=MAX_PURGE_AGE_SECONDS,
        required=False,
        allow_null=True,
        help_text="Only tasks last changed more than this many seconds ago.",
    )

    def purge_arguments(self) -> dict[str, Any]:
        data = self.validated_data
        return {"states": data["states"], "older_than": data.get("older_than")}


class TaskBatchSerializer(serializers.Serializer):
    """A JSON list of task objects, registered together or not at all.

    Errors name the failing item by position and id, e.g. "item 3 (id 'x'):
    timeout: ...", and `errors` lists one entry per item.
    """

    def __init__(self, *, data: list[Any]) -> None:
        super().__init__(data=data)
        self._items: list[NewTask] = []

    def to_internal_value(self, data: Any) -> Any:
        if not data:
            raise serializers.ValidationError({"non_field_errors": ["The list of tasks is empty."]})
        if len(data) > MAX_BATCH:
            raise serializers.ValidationError(
                {"non_field_errors": [f"At most {MAX_BATCH} tasks per request (got {len(data)})."]}
            )
        items: list[NewTask] = []
        first_seen: dict[str, int] = {}
        for index, item in enumerate(data):
            serializer = TaskCreateSerializer(data=item)
            if not serializer.is_valid():
                label = _item_label(index, item)
                raise serializers.ValidationError({label: serializer.errors})
            task = serializer.to_new_task()
            if task.id in first_seen:
                raise serializers.ValidationError(
                    {
                        _item_label(index, item): {
                            "id": [f"Duplicate of item {first_seen[task.id]} in this list."]
                        }
                    }
                )
            first_seen[task.id] = index
            items.append(task)
        self._items = items
        return {}

    def to_new_tasks(self) -> list[NewTask]:
        return self._items


def _item_label(index: int, item: Any) -> str:
    task_id = item.get("id") if isinstance(item, dict) else None
    return f"item {index}" + (f" (id {task_id!r})" if isinstance(task_id, str) else "")
