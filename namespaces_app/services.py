"""Operations on namespaces. Each runs in its own short transaction."""

from django.db import IntegrityError, transaction

from namespaces_app.exceptions import NamespaceAlreadyExists, NamespaceNotFound
from namespaces_app.models import Namespace


def register_namespace(*, namespace_id: str) -> Namespace:
    """Create a namespace. Raises NamespaceAlreadyExists when the id is taken."""
    try:
        with transaction.atomic():
            return Namespace.objects.create(id=namespace_id)
    except IntegrityError:
        raise NamespaceAlreadyExists(namespace_id) from None


def delete_namespace(*, namespace_id: str) -> int:
    """Delete a namespace and all its tasks; return how many tasks went with it.

    The namespace row is locked first (FOR UPDATE) so that a task registered
    concurrently either commits before the delete sees the tasks, or waits on
    its foreign-key check and then fails as an unknown namespace: the delete
    never trips over a task that appeared after it removed the others.
    Raises NamespaceNotFound.
    """
    from tasks_app.models import Task

    with transaction.atomic():
        namespace = Namespace.objects.select_for_update().filter(pk=namespace_id).first()
        if namespace is None:
            raise NamespaceNotFound(namespace_id)
        deleted_tasks, _ = Task.objects.filter(namespace_id=namespace_id).delete()
        namespace.delete()
    return deleted_tasks


def get_namespace(*, namespace_id: str) -> Namespace | None:
    return Namespace.objects.filter(pk=namespace_id).first()


def list_namespaces() -> list[Namespace]:
    return list(Namespace.objects.order_by("id"))


def namespace_exists(*, namespace_id: str) -> bool:
    return Namespace.objects.filter(pk=namespace_id).exists()
