"""The request parser of the v1 API.

A module of its own: DRF's parser module reaches DRF's view settings while it
loads, and those name the renderer in `taskq_project.api`.
"""

from collections.abc import Mapping
from typing import Any

import orjson
from rest_framework import exceptions
from rest_framework.parsers import JSONParser


class StrictJSONParser(JSONParser):
    """JSON bodies through orjson, which refuses what the standard library lets by.

    orjson rejects lone surrogates (`"\\ud800"`), which Python would carry
    into a `str` that no later step can encode, and stops nesting at 1,024
    levels with an error instead of a RecursionError deep in the stack. NaN
    and Infinity, which are not JSON, are refused too. Every refusal is a 400
    that says where the body went wrong.
    """

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        body = stream.read() if stream is not None else b""
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
