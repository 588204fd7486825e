from typing import Any

from rest_framework import serializers

from namespaces_app.models import History
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
        min_value=1, max_value=MAX_INT, required=False, allow_null=True
    )
    default_retries = StrictIntegerField(
        min_value=0, max_value=MAX_INT, required=False, allow_null=True
    )
    retry_backoff = BackoffSerializer(required=False)
    history = serializers.ChoiceField(choices=History.values, required=False)

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


class NamespaceCreateSerializer(NamespaceSettingsSerializer):
    id = IdField()
