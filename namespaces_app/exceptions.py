"""Domain errors of namespaces (taskq_project.errors: plain, free of HTTP)."""

from taskq_project.errors import Conflict, Forbidden, NotFound


class NamespaceNotFound(NotFound):
    code = "namespace_not_found"

    def __init__(self, namespace_id: str) -> None:
        super().__init__(f"Namespace {namespace_id!r} is not registered.")
        self.namespace_id = namespace_id


class NamespaceAlreadyExists(Conflict):
    code = "namespace_exists"

    def __init__(self, namespace_id: str) -> None:
        super().__init__(f"Namespace {namespace_id!r} is already registered.")
        self.namespace_id = namespace_id


class NamespaceOutOfScope(Forbidden):
    code = "namespace_out_of_scope"

    def __init__(self, namespace_id: str) -> None:
        super().__init__(f"This token is not allowed namespace {namespace_id!r}.")
        self.namespace_id = namespace_id
