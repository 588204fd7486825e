"""Domain errors, each carrying the HTTP status the API answers with."""

from rest_framework import status
from rest_framework.exceptions import APIException


class TaskNotFound(APIException):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "task_not_found"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"Task {task_id!r} is not registered.")


class TaskAlreadyExists(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "task_exists"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"Task {task_id!r} is already registered.")


class UnknownNamespaceForTask(APIException):
    """A task names a namespace that is not registered: the request is at fault (400)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "unknown_namespace"

    def __init__(self, namespace_id: str) -> None:
        super().__init__(f"Namespace {namespace_id!r} is not registered; register it first.")
        self.namespace_id = namespace_id
