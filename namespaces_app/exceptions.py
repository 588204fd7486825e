"""Domain errors, each carrying the HTTP status the API answers with."""

from rest_framework import status
from rest_framework.exceptions import APIException


class NamespaceNotFound(APIException):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "namespace_not_found"

    def __init__(self, namespace_id: str) -> None:
        super().__init__(f"Namespace {namespace_id!r} is not registered.")


class NamespaceAlreadyExists(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "namespace_exists"

    def __init__(self, namespace_id: str) -> None:
        super().__init__(f"Namespace {namespace_id!r} is already registered.")


class NamespaceOutOfScope(APIException):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "namespace_out_of_scope"

    def __init__(self, namespace_id: str) -> None:
        super().__init__(f"This token is not allowed namespace {namespace_id!r}.")
