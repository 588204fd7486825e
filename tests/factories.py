"""Builders for test data, going through the services like any client would."""

from django.db import connection

from namespaces_app.models import Namespace
from namespaces_app.services import register_namespace
from tasks_app.services import NewTask, TaskRow, register_tasks


def make_namespace(namespace_id: str = "ns") -> Namespace:
    return register_namespace(namespace_id=namespace_id)


def make_tasks(
    namespace_id: str,
    count: int,
    *,
    prefix: str = "t",
    timeout: int = 300,
    retries_left: int = 3,
    status: str = "idle",
) -> list[TaskRow]:
    return register_tasks(
        tasks=[
            NewTask(
                id=f"{prefix}{i:06d}",
                namespace_id=namespace_id,
                timeout=timeout,
                retries_left=retries_left,
                status=status,
            )
            for i in range(count)
        ]
    )


def make_task(task_id: str, namespace_id: str = "ns", **fields: object) -> TaskRow:
    return register_tasks(tasks=[NewTask(id=task_id, namespace_id=namespace_id, **fields)])[0]  # type: ignore[arg-type]


def age_task(task_id: str, seconds: float) -> None:
    """Move every timestamp of a task `seconds` into the past.

    Lease decisions use the database clock, which tests cannot freeze; ageing
    the row is the same as letting that much time pass for this task.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE tasks_app_task
            SET created_at = created_at - make_interval(secs => %(s)s),
                updated_at = updated_at - make_interval(secs => %(s)s),
                available_at = available_at - make_interval(secs => %(s)s),
                lease_expires_at = lease_expires_at - make_interval(secs => %(s)s)
            WHERE id = %(id)s
            """,
            {"s": seconds, "id": task_id},
        )
        assert cursor.rowcount == 1


def task_state(task_id: str) -> dict[str, object]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, retries_left, available_at IS NOT NULL, lease_expires_at IS NOT NULL "
            "FROM tasks_app_task WHERE id = %s",
            [task_id],
        )
        row = cursor.fetchone()
    assert row is not None, f"task {task_id!r} does not exist"
    return {
        "status": row[0],
        "retries_left": row[1],
        "capturable_later": row[2],
        "leased": row[3],
    }
