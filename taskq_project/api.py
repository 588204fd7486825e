"""Shared pieces of the v1 API: strict input fields and the error format.

Every error answers JSON with a human-readable `detail`; validation errors
also carry `errors`, keyed by field, so clients can point at what was wrong.
"""

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.utils import encoders

from taskq_project import errors
from taskq_project.db_errors import Transient, transient
from taskq_project.ids import ID_SCHEMA, id_problem

log = logging.getLogger(__name__)


def _first_message(errors: Any, path: str = "") -> str:
    if isinstance(errors, dict):
        for key, value in errors.items():
            prefix = path if key == "non_field_errors" else (f"{path}.{key}" if path else str(key))
            return _first_message(value, prefix)
    if isinstance(errors, list):
        for index, value in enumerate(errors):
            if isinstance(value, (dict, list)):
                return _first_message(value, f"{path}[{index}]")
            return f"{path}: {value}" if path else str(value)
    return f"{path}: {errors}" if path else str(errors)


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "payload_too_large"
    default_detail = "Request body too large."


# The one mapping of the product's domain errors to HTTP.
DOMAIN_STATUS: dict[type[errors.DomainError], int] = {
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Invalid: 400,
    errors.Forbidden: 403,
}


def domain_status(exc: errors.DomainError) -> int:
    for kind in type(exc).__mro__:
        if kind in DOMAIN_STATUS:
            return DOMAIN_STATUS[kind]  # type: ignore[index]
    return 400


def transient_response(kind: Transient) -> dict[str, Any]:
    return {"detail": kind.detail, "code": kind.code}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    kind = transient(exc)
    if kind is not None:
        log.warning("transient database error (%s): %s", kind.code, exc)
        return Response(
            transient_response(kind), status=503, headers={"Retry-After": str(kind.retry_after)}
        )
    if isinstance(exc, errors.DomainError):
        return Response({"detail": exc.detail, "code": exc.code}, status=domain_status(exc))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(
            f"Request body too large: at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        )
    # Imported here: DRF's views module reads the renderer setting, which names
    # this module, as it loads.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "detail": _first_message(exc.detail),
            "code": "invalid",
            "errors": exc.detail,
        }
    else:
        codes = exc.get_codes()
        response.data = {
            "detail": _first_message(exc.detail),
            "code": codes if isinstance(codes, str) else "error",
        }
    return response


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    # Called while the exception is being handled: a transient database error
    # met outside DRF's views (middleware, the admin, /healthz) answers 503
    # too, not 500.
    kind = transient(sys.exc_info()[1])
    if kind is not None:
        response = JsonResponse(transient_response(kind), status=503)
        response["Retry-After"] = str(kind.retry_after)
        return response
    return JsonResponse({"detail": "Internal server error.", "code": "server_error"}, status=500)


def json_bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"detail": "Bad request.", "code": "bad_request"}, status=400)


class StrictIntegerField(serializers.IntegerField):
    """An integer that must be a JSON number: no strings, booleans or floats."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(ID_SCHEMA)
class IdField(serializers.Field):
    """An id of a namespace or task: a JSON string of 1-255 characters, no control characters."""

    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        problem = id_problem(data)
        if problem is not None:
            raise serializers.ValidationError(f"Id {problem}.")
        return data

    def to_representation(self, value: Any) -> str:
        return str(value)


class StrictSerializer(serializers.Serializer):
    """A serializer that rejects keys it does not know, so typos do not pass silently."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


class FastJSONRenderer(JSONRenderer):
    """JSON via orjson: several times faster than the standard library on the
    thousand-task answers of capture and release. Same media type and output
    shape as DRF's renderer (compact, UTF-8)."""

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        if data is None:
            return b""
        try:
            return orjson.dumps(data, option=orjson.OPT_PASSTHROUGH_DATETIME, default=_fallback)
        except TypeError:
            # Anything orjson cannot take (lazy translations in DRF's own
            # messages, for one) goes through the standard library, with
            # every non-ASCII character escaped: a string that is not valid
            # Unicode (a lone surrogate from a query string) must still render.
            return json.dumps(data, cls=encoders.JSONEncoder, ensure_ascii=True).encode("ascii")


def _fallback(value: Any) -> Any:
    return encoders.JSONEncoder().default(value)
