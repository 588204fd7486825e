"""Operator actions (the admin's controls) obey the lease rules."""

import pytest

from tasks_app.models import Task
from tasks_app.services import (
    OperatorAction,
    apply_operator_action,
    apply_operator_action_to_queryset,
    capture_tasks,
)
from tests.factories import age_task, make_namespace, make_task, task_state

pytestmark = pytest.mark.django_db


@pytest.fixture
def tasks():
    """One task in every state: idle, leased, expired, done, failed (retry), failed (final)."""
    make_namespace("ns")
    make_task("leased", retries_left=2)
    make_task("expired", retries_left=2)
    capture_tasks(namespace_id="ns", limit=2)
    age_task("expired", 3600)
    make_task("idle")
    make_task("done", status="done")
    make_task("retry", status="failed", retries_left=2)
    make_task("final", status="failed", retries_left=0)
    return ["idle", "leased", "expired", "done", "retry", "final"]


def run(action, ids, **kwargs):
    return apply_operator_action(action=action, task_ids=ids, **kwargs)


def test_requeue_moves_done_and_failed_tasks_back_to_idle(tasks):
    result = run(OperatorAction.REQUEUE, tasks)
    assert result.changed == 3
    assert result.skipped == {"already idle": 1, "leased (cancel the lease instead)": 2}
    for task_id in ("done", "retry", "final"):
        assert task_state(task_id)["status"] == "idle"
    assert task_state("final")["retries_left"] == 0  # kept unless reset
    assert task_state("leased")["status"] == "in_progress"


def test_requeue_can_reset_retries(tasks):
    run(OperatorAction.REQUEUE, ["final", "retry"], reset_retries_to=5)
    assert task_state("final")["retries_left"] == 5
    assert task_state("retry")["retries_left"] == 5


def test_requeued_tasks_are_captured_again(tasks):
    run(OperatorAction.REQUEUE, ["final"])
    captured = {row.id for row in capture_tasks(namespace_id="ns", limit=100)}
    assert "final" in captured


def test_cancel_lease_hands_leased_tasks_back_without_charging_a_retry(tasks):
    result = run(OperatorAction.CANCEL_LEASE, tasks)
    assert result.changed == 2
    assert result.skipped_total == 4
    assert task_state("leased") == {
        "status": "idle",
        "retries_left": 2,
        "capturable_later": True,
        "leased": False,
    }
    assert task_state("expired")["status"] == "idle"


def test_mark_done_never_touches_a_valid_lease(tasks):
    result = run(OperatorAction.MARK_DONE, tasks)
    assert result.changed == 4  # idle, expired, retry, final
    assert result.skipped == {"under a valid lease": 1, "already done": 1}
    assert task_state("leased")["status"] == "in_progress"
    assert task_state("expired")["status"] == "done"


def test_mark_failed_keeps_retries_so_a_task_with_retries_goes_round_again(tasks):
    result = run(OperatorAction.MARK_FAILED, tasks)
    assert result.changed == 3  # idle, expired, done
    assert result.skipped == {"under a valid lease": 1, "already failed": 2}
    assert task_state("idle") == {
        "status": "failed",
        "retries_left": 3,
        "capturable_later": True,
        "leased": False,
    }


def test_delete_removes_tasks_whatever_their_state_and_counts_unknown_ids(tasks):
    result = run(OperatorAction.DELETE, [*tasks, "ghost"])
    assert result.changed == 6
    assert result.skipped == {"not registered": 1}
    assert not Task.objects.exists()


def test_unknown_ids_are_reported_as_skipped(tasks):
    result = run(OperatorAction.MARK_DONE, ["ghost", "idle"])
    assert result.changed == 1
    assert result.skipped == {"not registered": 1}


def test_action_on_a_whole_filter_works_in_batches():
    make_namespace("ns")
    from tests.factories import make_tasks

    make_tasks("ns", 2500, status="failed", retries_left=0)
    make_tasks("ns", 10, prefix="i")
    queryset = Task.objects.filter(status="failed", retries_left=0)
    result = apply_operator_action_to_queryset(
        action=OperatorAction.REQUEUE, queryset=queryset, reset_retries_to=1, batch_size=1000
    )
    assert result.changed == 2500
    assert result.skipped_total == 0
    assert Task.objects.filter(status="idle").count() == 2510
    assert set(Task.objects.values_list("retries_left", flat=True)) == {1, 3}


def test_summary_reads_well(tasks):
    result = run(OperatorAction.MARK_DONE, tasks)
    assert result.summary() == "4 changed, 2 skipped (1 already done, 1 under a valid lease)"
