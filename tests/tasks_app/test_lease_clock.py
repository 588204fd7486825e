"""Lease times, to the microsecond, on a frozen database clock (tests/clock.py).

Each test names the rule it holds; moving a boundary by one comparison
(`<=` to `<`) or taking a time from the wrong column makes it fail.
"""

from datetime import timedelta

import pytest

from tasks_app.models import Task
from tasks_app.services import Lease, capture_tasks, extend_leases, release_tasks
from tasks_app.sweeper import reclaim_expired_leases
from tests.factories import make_namespace, make_task

pytestmark = pytest.mark.django_db

ONE_MICROSECOND = timedelta(microseconds=1)


@pytest.fixture(autouse=True)
def namespace(db):
    make_namespace("ns")


def stored(task_id: str) -> Task:
    return Task.objects.get(pk=task_id)


def lease_of(row) -> Lease:
    return Lease(id=row.id, lease_token=row.lease_token)


def captured_ids() -> list[str]:
    return [row.id for row in capture_tasks(namespace_id="ns", limit=10)]


def test_a_capture_leases_for_exactly_the_timeout(clock):
    start = clock.now()
    make_task("a", timeout=60, retries_left=2)
    capture_tasks(namespace_id="ns", limit=1)
    task = stored("a")
    assert task.lease_expires_at == start + timedelta(seconds=60)
    assert task.updated_at == start
    # With retries left, it comes back out when the lease ends.
    assert task.available_at == task.lease_expires_at


def test_a_lease_is_held_until_its_last_microsecond_and_ends_at_its_expiry(clock):
    start = clock.now()
    make_task("a", timeout=60)
    assert captured_ids() == ["a"]
    clock.freeze(start + timedelta(seconds=60) - ONE_MICROSECOND)
    assert captured_ids() == []
    assert reclaim_expired_leases().reclaimed == 0
    clock.freeze(start + timedelta(seconds=60))
    assert captured_ids() == ["a"]
    assert stored("a").attempt == 2


def test_the_sweeper_reclaims_a_lease_at_its_exact_expiry_and_not_before(clock):
    start = clock.now()
    make_task("a", timeout=60)
    capture_tasks(namespace_id="ns", limit=1)
    clock.freeze(start + timedelta(seconds=60) - ONE_MICROSECOND)
    assert reclaim_expired_leases().reclaimed == 0
    assert stored("a").status == "in_progress"
    clock.freeze(start + timedelta(seconds=60))
    assert reclaim_expired_leases().reclaimed == 1
    assert stored("a").status == "failed"


def test_a_reclaimed_retry_keeps_its_place_at_its_lease_expiry(clock):
    """Not at the sweep's time: a task registered between the expiry and the
    sweep comes after the reclaimed one."""
    start = clock.now()
    make_task("expired", timeout=60, retries_left=2)
    capture_tasks(namespace_id="ns", limit=1)
    clock.advance(100)
    make_task("newer", timeout=60)
    clock.advance(400)
    assert reclaim_expired_leases().reclaimed == 1
    task = stored("expired")
    assert task.available_at == start + timedelta(seconds=60)
    assert task.updated_at == clock.now()
    assert [row.id for row in capture_tasks(namespace_id="ns", limit=1)] == ["expired"]


def test_a_release_stamps_the_release_time(clock):
    make_task("a", timeout=60)
    (row,) = capture_tasks(namespace_id="ns", limit=1)
    released_at = clock.advance(7.5)
    assert release_tasks(status="done", leases=[lease_of(row)]).released
    task = stored("a")
    assert task.updated_at == released_at
    assert task.lease_expires_at is None
    assert task.available_at is None


@pytest.mark.parametrize("status", ["idle", "failed"])
def test_a_task_released_for_another_try_is_available_from_the_release_time(clock, status):
    make_task("a", timeout=60, retries_left=2)
    (row,) = capture_tasks(namespace_id="ns", limit=1)
    released_at = clock.advance(3)
    release_tasks(status=status, leases=[lease_of(row)])
    task = stored("a")
    assert task.available_at == released_at
    assert task.updated_at == released_at


def test_an_extend_counts_its_timeout_from_the_extend_time(clock):
    start = clock.now()
    make_task("a", timeout=60)
    (row,) = capture_tasks(namespace_id="ns", limit=1)
    clock.advance(30)
    assert extend_leases(leases=[lease_of(row)], timeout=100).extended
    ends = start + timedelta(seconds=130)
    task = stored("a")
    assert task.lease_expires_at == ends
    assert task.updated_at == start + timedelta(seconds=30)
    clock.freeze(ends - ONE_MICROSECOND)
    assert captured_ids() == []
    clock.freeze(ends)
    assert captured_ids() == ["a"]


def test_an_expired_lease_nobody_recaptured_is_still_its_holders(clock):
    make_task("a", timeout=60)
    (row,) = capture_tasks(namespace_id="ns", limit=1)
    clock.advance(61)
    assert release_tasks(status="done", leases=[lease_of(row)]).released
    assert stored("a").status == "done"


def test_a_capture_leases_oldest_first(clock):
    for name in ("first", "second", "third"):
        make_task(name, timeout=60)
        clock.advance(1)
    assert [row.id for row in capture_tasks(namespace_id="ns", limit=2)] == ["first", "second"]


def test_a_capture_follows_availability_not_the_order_rows_were_written(clock):
    """Released in the order b, c, a but available c, a, b: capture follows the latter."""
    start = clock.now()
    for name in ("a", "b", "c"):
        make_task(name, timeout=60)
    leases = {row.id: lease_of(row) for row in capture_tasks(namespace_id="ns", limit=3)}
    for name, seconds in (("b", 3), ("c", 1), ("a", 2)):
        clock.freeze(start + timedelta(seconds=seconds))
        release_tasks(status="idle", leases=[leases[name]])
    clock.freeze(start + timedelta(seconds=5))
    available = {t.id: t.available_at - start for t in Task.objects.order_by("id")}
    assert available == {name: timedelta(seconds=s) for name, s in (("a", 2), ("b", 3), ("c", 1))}
    assert [row.id for row in capture_tasks(namespace_id="ns", limit=3)] == ["c", "a", "b"]
