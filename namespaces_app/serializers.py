from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from namespaces_app.models import RESERVED_NAMESPACE_ID_SUFFIXES, History
from namespaces_app.services import Backoff, Settings
from taskq_project.api import IdField, StrictIntegerField, StrictSerializer

MAX_INT = 2_147_483_647
# A retry held back longer than a year is a task that should be rescheduled.
MAX_BACKOFF_SECONDS = 366 * 24 * 3600


class NumberField(serializers.FloatField):
    """A JSON number: no strings or booleans."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


BACKOFF_SECONDS_SCHEMA = {"type": "number", "minimum": 0.001, "maximum": MAX_BACKOFF_SECONDS}


def backoff_kind_schema(kind: str) -> dict[str, Any]:
    """The schema of a backoff's `kind` that names one shape.

    Inside allOf: drf-spectacular would otherwise make a component of each
    one-value enum, named after a hash of it.
    """
    return {"allOf": [{"type": "string", "enum": [kind]}]}


# What BackoffSerializer accepts, for the OpenAPI schema: one shape per kind.
# That `max` is at least `base` is checked by the server; no schema says it.
BACKOFF_REQUEST_SCHEMA = {
    "description": "How long the retry of a failed or expired attempt waits "
    '(default: `{"kind": "none"}`).',
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
            "required": ["kind", "base"],
            "additionalProperties": False,
            "properties": {
                "kind": backoff_kind_schema("exponential"),
                "base": {
                    **BACKOFF_SECONDS_SCHEMA,
                    "description": "Seconds: the first retry's wait.",
                },
                "max": {
                    **BACKOFF_SECONDS_SCHEMA,
                    "description": "Seconds, at least `base`: the longest wait. "
                    "Default: the larger of `base` and 3600.",
                },
                "jitter": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "default": 0,
                    "description": "Up to this share of each wait is taken off at random.",
                },
            },
            "description": "Attempt n's retry waits min(max, base * 2^(n-1)) seconds.",
        },
    ],
}


@extend_schema_field(BACKOFF_REQUEST_SCHEMA, component_name="BackoffRequest")
class BackoffSerializer(StrictSerializer):
    """`{"kind": "none"}` or `{"kind": "exponential", "base": s, "max": s, "jitter": f}`."""

    kind = serializers.ChoiceField(choices=["none", "exponential"])
    base = NumberField(min_value=0.001, max_value=MAX_BACKOFF_SECONDS, required=False)
    max = NumberField(min_value=0.001, max_value=MAX_BACKOFF_SECONDS, required=False)
    jitter = NumberField(min_value=0, max_value=1, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["kind"] == "none":
            extra = sorted(set(attrs) - {"kind"})
            if extra:
                raise serializers.ValidationError(
                    {extra[0]: ['Only an "exponential" backoff takes it.']}
                )
            return attrs
        if "base" not in attrs:
            raise serializers.ValidationError({"base": ["This field is required."]})
        attrs.setdefault("max", max(attrs["base"], 3600.0))
        if attrs["max"] < attrs["base"]:
            raise serializers.ValidationError({"max": ["Must be at least base."]})
        return attrs


class NamespaceSettingsSerializer(StrictSerializer):
    """The settings a namespace may set; null resets one to the default."""

    default_timeout = StrictIntegerField(
        min_value=1,
        max_value=MAX_INT,
        required=False,
        allow_null=True,
        help_text="Seconds, for tasks registered without `timeout`; null: 300.",
    )
    default_retries = StrictIntegerField(
        min_value=0,
        max_value=MAX_INT,
        required=False,
        allow_null=True,
        help_text="For tasks registered without `retries_left`; null: 3.",
    )
    retry_backoff = BackoffSerializer(required=False)
    history = serializers.ChoiceField(
        choices=History.values,
        required=False,
        help_text="Which ended attempts are kept: failures only (the default), or all.",
    )
    max_in_flight = StrictIntegerField(
        min_value=1,
        max_value=MAX_INT,
        required=False,
        allow_null=True,
        help_text="At most this many valid leases at once in the namespace; null: no limit.",
    )

    def to_settings(self) -> Settings:
        """Only the settings given (PATCH changes those alone)."""
        data = dict(self.validated_data)
        data.pop("id", None)
        if "retry_backoff" in data:
            given = data["retry_backoff"]
            data["retry_backoff"] = (
                None
                if given["kind"] == "none"
                else Backoff(base=given["base"], max=given["max"], jitter=given.get("jitter", 0.0))
            )
        return Settings(data)


class NamespaceIdField(IdField):
    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        for suffix in RESERVED_NAMESPACE_ID_SUFFIXES:
            if value.endswith(suffix):
                raise serializers.ValidationError(
                    f"An id must not end with {suffix!r}"
                    f" (/v1/namespace/{{id}}{suffix} is an endpoint)."
                )
        return value


class NamespaceCreateSerializer(NamespaceSettingsSerializer):
    id = NamespaceIdField()
