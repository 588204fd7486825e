"""Operations on namespaces. Each runs in its own short transaction."""

from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction

from namespaces_app.exceptions import (
    NamespaceAlreadyExists,
    NamespaceNotFound,
    NamespaceOutOfScope,
)
from namespaces_app.models import Namespace
from taskq_project.channels import WORK_CHANNEL

Scope = frozenset[str] | None


@dataclass(frozen=True)
class Backoff:
    """Exponential retry backoff: attempt n's failure or expiry waits
    min(max, base * 2^(n-1)) seconds, less a random share of up to `jitter`."""

    base: float
    max: float
    jitter: float = 0.0


class Settings(dict[str, Any]):
    """Namespace settings by name (default_timeout, default_retries,
    retry_backoff: a Backoff or None, history); only those given change."""

    def columns(self) -> dict[str, Any]:
        values = {k: v for k, v in self.items() if k != "retry_backoff"}
        if "retry_backoff" in self:
            backoff = self["retry_backoff"]
            values["backoff_base"] = backoff.base if backoff else None
            values["backoff_max"] = backoff.max if backoff else None
            values["backoff_jitter"] = backoff.jitter if backoff else 0.0
        return values


def backoff_of(namespace: Namespace) -> Backoff | None:
    if namespace.backoff_base is None or namespace.backoff_max is None:
        return None
    return Backoff(namespace.backoff_base, namespace.backoff_max, namespace.backoff_jitter)


def in_scope(namespace_id: str, scope: Scope) -> bool:
    """Whether a token limited to `scope` (None: unlimited) may see `namespace_id`."""
    return scope is None or namespace_id in scope


def register_namespace(
    *, namespace_id: str, scope: Scope = None, settings: Settings | None = None
) -> Namespace:
    """Create a namespace. Raises NamespaceAlreadyExists when the id is taken.

    A token limited to some namespaces may register only those (it was given
    the names before they existed); others raise NamespaceOutOfScope.
    """
    if not in_scope(namespace_id, scope):
        raise NamespaceOutOfScope(namespace_id)
    try:
        with transaction.atomic():
            return Namespace.objects.create(id=namespace_id, **(settings or Settings()).columns())
    except IntegrityError:
        raise NamespaceAlreadyExists(namespace_id) from None


def change_namespace(*, namespace_id: str, settings: Settings, scope: Scope = None) -> Namespace:
    """Change the settings given, in one UPDATE; they apply to what happens
    next (a task registered, a lease failed), never to what was decided.
    Raising or lifting `max_in_flight` wakes the namespace's waiting captures
    (at commit), which may now lease. Raises NamespaceNotFound."""
    if not in_scope(namespace_id, scope):
        raise NamespaceNotFound(namespace_id)
    with transaction.atomic():
        namespace = Namespace.objects.select_for_update().filter(pk=namespace_id).first()
        if namespace is None:
            raise NamespaceNotFound(namespace_id)
        cap = namespace.max_in_flight
        for column, value in settings.columns().items():
            setattr(namespace, column, value)
        namespace.save(update_fields=list(settings.columns()) or None)
        new_cap = namespace.max_in_flight
        if cap is not None and (new_cap is None or new_cap > cap):
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [WORK_CHANNEL, namespace_id])
    return namespace


def delete_namespace(*, namespace_id: str, scope: Scope = None) -> int:
    """Delete a namespace and all its tasks; return how many tasks went with it.

    The namespace row is locked first (FOR UPDATE) so that a task registered
    concurrently either commits before the delete sees the tasks, or waits on
    its foreign-key check and then fails as an unknown namespace: the delete
    never trips over a task that appeared after it removed the others.
    Raises NamespaceNotFound.
    """
    if not in_scope(namespace_id, scope):
        raise NamespaceNotFound(namespace_id)
    with transaction.atomic():
        namespace = Namespace.objects.select_for_update().filter(pk=namespace_id).first()
        if namespace is None:
            raise NamespaceNotFound(namespace_id)
        # Through the tasks' foreign key (`related_name="tasks"`): tasks build
        # on namespaces, never the other way round, so no import of tasks_app.
        deleted_tasks, _ = namespace.tasks.all().delete()
        namespace.delete()
    return deleted_tasks


def get_namespace(*, namespace_id: str, scope: Scope = None) -> Namespace | None:
    if not in_scope(namespace_id, scope):
        return None
    return Namespace.objects.filter(pk=namespace_id).first()


def list_namespaces(*, scope: Scope = None) -> list[Namespace]:
    namespaces = Namespace.objects.order_by("id")
    if scope is not None:
        namespaces = namespaces.filter(pk__in=scope)
    return list(namespaces)
