"""Input validation for the task endpoints; rendering lives in `render_task`.

Lease fields (`updated_at`, `lease_expires_at`) are never writable: they only
change through capture and release.
"""

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from taskq_project.api import IdField, StrictIntegerField, StrictSerializer
from tasks_app.models import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MAX_INT,
    RESERVED_TASK_IDS,
    TaskStatus,
)
from tasks_app.services import MAX_BATCH, MAX_EXTEND_SECONDS, RELEASE_STATUSES, Lease, NewTask


class TaskIdField(IdField):
    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if value in RESERVED_TASK_IDS:
            raise serializers.ValidationError(
                f"{value!r} is reserved (it names an endpoint under /v1/task/)."
            )
        return value


class TaskCreateSerializer(StrictSerializer):
    id = TaskIdField()
    namespace_id = IdField()
    timeout = StrictIntegerField(min_value=1, max_value=MAX_INT, default=DEFAULT_TIMEOUT)
    retries_left = StrictIntegerField(min_value=0, max_value=MAX_INT, default=DEFAULT_RETRIES)
    status = serializers.ChoiceField(choices=TaskStatus.values, default=TaskStatus.IDLE)

    def to_new_task(self) -> NewTask:
        return NewTask(**self.validated_data)


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


class LeaseListField(serializers.ListField):
    """Up to 1,000 leases; one id given twice must carry the same token."""

    def __init__(self, **kwargs: Any) -> None:
        # min_length and max_length as well, so that the schema states them.
        super().__init__(
            child=LeaseSerializer(),
            allow_empty=False,
            min_length=1,
            max_length=MAX_BATCH,
            **kwargs,
        )

    def to_internal_value(self, data: Any) -> list[Lease]:
        if isinstance(data, list) and len(data) > MAX_BATCH:
            raise serializers.ValidationError(
                f"At most {MAX_BATCH} leases per call (got {len(data)})."
            )
        leases = [Lease(**item) for item in super().to_internal_value(data)]
        tokens: dict[str, str] = {}
        for lease in leases:
            if tokens.setdefault(lease.id, lease.lease_token) != lease.lease_token:
                raise serializers.ValidationError(
                    f"Task {lease.id!r} is given twice with different lease tokens."
                )
        return leases


class ReleaseSerializer(StrictSerializer):
    """The seed's `{"status", "task_ids"}`, or the fenced `{"status", "leases"}`."""

    status = serializers.ChoiceField(choices=[str(s) for s in RELEASE_STATUSES])
    task_ids = serializers.ListField(
        child=IdField(), allow_empty=False, min_length=1, max_length=MAX_BATCH, required=False
    )
    leases = LeaseListField(required=False)

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


class CaptureSerializer(StrictSerializer):
    namespace_id = IdField()
    limit = serializers.IntegerField(min_value=1, max_value=MAX_BATCH, default=1)

    def to_internal_value(self, data: Any) -> Any:
        # Query strings carry text: accept "10" but not "10.0", " 10" or "1e1".
        limit = data.get("limit") if hasattr(data, "get") else None
        if isinstance(limit, str) and not (limit.isascii() and limit.isdigit()):
            raise serializers.ValidationError(
                {"limit": ["A whole number from 1 to 1000 is required."]}
            )
        if isinstance(limit, bool) or isinstance(limit, float):
            raise serializers.ValidationError(
                {"limit": ["A whole number from 1 to 1000 is required."]}
            )
        return super().to_internal_value(data)


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
