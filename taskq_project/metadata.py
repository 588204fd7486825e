"""OPTIONS answers for the API.

Its own module: DRF imports it while `rest_framework.views` is still loading,
so it must not import that module.
"""

from typing import Any

from rest_framework.metadata import SimpleMetadata
from rest_framework.request import Request


class BasicMetadata(SimpleMetadata):
    """OPTIONS answers: name, description, media types; no form introspection.

    DRF's default describes the POST/PUT serializer of a generic view, which
    these views, validating with a different serializer per action, lack.
    """

    def determine_metadata(self, request: Request, view: Any) -> dict[str, Any]:
        return {
            "name": view.get_view_name(),
            "description": view.get_view_description(),
            "renders": [renderer.media_type for renderer in view.renderer_classes],
            "parses": [parser.media_type for parser in view.parser_classes],
        }
