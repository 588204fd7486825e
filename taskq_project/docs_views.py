"""The OpenAPI schema and its documentation pages, with JSON errors.

drf-spectacular's views render their errors with the renderer negotiated for
the page (YAML for the schema, HTML for the docs); every error under /v1/ is
JSON, so clients and the fuzzer can read it whatever they asked for.
"""

from typing import Any

from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.request import Request
from rest_framework.response import Response

from taskq_project.api import FastJSONRenderer


class _JSONErrors:
    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        if response.status_code >= 400 and isinstance(response, Response):
            # After DRF's own finalize, which sets the negotiated renderer.
            response.accepted_renderer = FastJSONRenderer()
            response.accepted_media_type = "application/json"
        return response


class SchemaView(_JSONErrors, SpectacularAPIView):
    pass


class SwaggerView(_JSONErrors, SpectacularSwaggerView):
    pass


class RedocView(_JSONErrors, SpectacularRedocView):
    pass
