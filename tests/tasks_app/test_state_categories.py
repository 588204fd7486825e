"""The states operators see, in the dashboard and the admin's filter, agree.

Both take the six states (a lease can be expired, a failure final) from
tasks_app.lease.CATEGORIES, the dashboard as SQL for its own indexes and the
admin as ORM filters; this test holds them to each other: the same names and
labels, and over a task in every state (a lease ending exactly now among
them, on the frozen clock), the same tasks in each state, every task in
exactly one.
"""

from datetime import timedelta

import pytest
from django.db import connection

from tasks_app import dashboard
from tasks_app.admin import STATE_FILTERS
from tasks_app.models import Task, TaskStatus
from tasks_app.services import Lease, capture_tasks, release_tasks
from tests.factories import make_namespace, make_task

pytestmark = pytest.mark.django_db

EXPECTED = {
    "idle": {"idle", "idle-no-retries", "turn-comes-now"},
    "scheduled": {"scheduled"},
    "in_progress": {"leased"},
    "expired": {"expired", "expired-no-retries", "ends-now"},
    "done": {"done"},
    "failed_retry": {"failed"},
    "failed_for_good": {"failed-for-good"},
}


def capture(task_id: str) -> Lease:
    (row,) = capture_tasks(namespace_id=task_id, limit=1)
    return Lease(id=row.id, lease_token=row.lease_token)


@pytest.fixture
def tasks_in_every_state(clock):
    start = clock.now()
    timeouts = {"leased": 100, "expired": 10, "expired-no-retries": 10, "ends-now": 30}
    for task_id in [name for names in EXPECTED.values() for name in names]:
        # A namespace each, so each capture takes its own task.
        make_namespace(task_id)
        retries = 0 if "no-retries" in task_id or task_id == "failed-for-good" else 1
        delays = {"scheduled": 31, "turn-comes-now": 30}
        make_task(
            task_id,
            task_id,
            timeout=timeouts.get(task_id, 60),
            retries_left=retries,
            delay=delays.get(task_id),
        )
    for task_id in ("leased", "expired", "expired-no-retries", "ends-now"):
        capture(task_id)
    release_tasks(status="done", leases=[capture("done")])
    release_tasks(status="failed", leases=[capture("failed")])
    release_tasks(status="failed", leases=[capture("failed-for-good")])
    clock.freeze(start + timedelta(seconds=30))
    assert Task.objects.get(pk="ends-now").lease_expires_at == clock.now()
    assert Task.objects.get(pk="turn-comes-now").available_at == clock.now()


def dashboard_states() -> dict[str, set[str]]:
    found = {}
    with connection.cursor() as cursor:
        for category, where in dashboard._CATEGORY_WHERE.items():
            cursor.execute(f"SELECT id FROM tasks_app_task WHERE {where}")
            found[category] = {row[0] for row in cursor.fetchall()}
    return found


def admin_states() -> dict[str, set[str]]:
    return {
        key: set(Task.objects.filter(query).values_list("id", flat=True))
        for key, (_, query) in STATE_FILTERS.items()
    }


def test_both_places_name_the_same_states_with_the_same_labels():
    assert list(dashboard.CATEGORIES) == list(STATE_FILTERS)
    assert set(dashboard._CATEGORY_WHERE) == set(STATE_FILTERS)
    assert dashboard.CATEGORY_LABELS == {key: label for key, (label, _) in STATE_FILTERS.items()}


def test_the_dashboard_and_the_admin_put_every_task_in_the_same_single_state(
    tasks_in_every_state,
):
    assert dashboard_states() == EXPECTED
    assert admin_states() == EXPECTED
    every = [task_id for ids in EXPECTED.values() for task_id in ids]
    assert sorted(every) == sorted(Task.objects.values_list("id", flat=True))
    assert {t.status for t in Task.objects.all()} == set(TaskStatus.values)
