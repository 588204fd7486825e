"""Keyset pagination for task lists.

A namespace may hold millions of tasks, so lists are cut into pages ordered
by id and continued with an opaque cursor (`next`), which stays one index
range scan on `task_namespace_id_idx` however deep the page: no OFFSET.
"""

from typing import Any

from rest_framework import pagination
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from taskq_project.ids import id_problem

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class TaskCursorPagination(pagination.CursorPagination):
    ordering = "id"
    page_size = DEFAULT_PAGE_SIZE
    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        valid = raw.isascii() and raw.isdigit() and len(raw) <= 4
        if not valid or not 1 <= int(raw) <= MAX_PAGE_SIZE:
            raise ValidationError(
                {"page_size": [f"A whole number from 1 to {MAX_PAGE_SIZE} is required."]}
            )
        return int(raw)

    def decode_cursor(self, request: Request) -> Any:
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise ValidationError({"cursor": ["Invalid cursor."]}) from None
        if cursor is None:
            return None
        # DRF reads any base64 that holds no cursor fields as "the first
        # page"; a client sending such a cursor has a bug worth reporting.
        no_position = cursor.position is None and cursor.offset == 0 and not cursor.reverse
        if no_position or (cursor.position is not None and id_problem(str(cursor.position))):
            raise ValidationError({"cursor": ["Invalid cursor."]})
        return cursor

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"list": data, "next": self.get_next_link()})
