"""Domain errors of tasks (taskq_project.errors: plain, free of HTTP)."""

from taskq_project.errors import Conflict, Invalid, NotFound


class TaskNotFound(NotFound):
    code = "task_not_found"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"Task {task_id!r} is not registered.")
        self.task_id = task_id


class TaskAlreadyExists(Conflict):
    code = "task_exists"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"Task {task_id!r} is already registered.")
        self.task_id = task_id


class UnknownNamespaceForTask(Invalid):
    """A task names a namespace that is not registered: the request is at fault."""

    code = "unknown_namespace"

    def __init__(self, namespace_id: str) -> None:
        super().__init__(f"Namespace {namespace_id!r} is not registered; register it first.")
        self.namespace_id = namespace_id
