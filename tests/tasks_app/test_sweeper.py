"""The lease sweeper and retention, against real PostgreSQL."""

import random
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction

from tasks_app import lease
from tasks_app.services import capture_tasks, release_tasks
from tasks_app.sweeper import purge_done_tasks, reclaim_expired_leases
from tests.factories import age_task, make_namespace, make_task, make_tasks, task_state
from tests.tasks_app.test_capture_concurrency import run_in_threads


def lease_and_expire(task_id: str, namespace_id: str = "ns") -> None:
    leased = [row.id for row in capture_tasks(namespace_id=namespace_id, limit=1000)]
    assert task_id in leased
    age_task(task_id, 3600)


@pytest.mark.django_db
class TestReclaim:
    def test_expired_lease_with_retries_becomes_failed_and_capturable_without_charge(self):
        make_namespace("ns")
        make_task("t", retries_left=2)
        lease_and_expire("t")
        result = reclaim_expired_leases()
        assert (result.reclaimed, result.retryable, result.failed_for_good) == (1, 1, 0)
        assert task_state("t") == {
            "status": "failed",
            "retries_left": 2,
            "capturable_later": True,
            "leased": False,
        }
        # The capture that picks it up again charges the retry, once.
        assert capture_tasks(namespace_id="ns", limit=1)[0].retries_left == 1

    def test_expired_lease_without_retries_fails_for_good(self):
        make_namespace("ns")
        make_task("t", retries_left=0)
        lease_and_expire("t")
        result = reclaim_expired_leases()
        assert (result.reclaimed, result.failed_for_good) == (1, 1)
        assert task_state("t") == {
            "status": "failed",
            "retries_left": 0,
            "capturable_later": False,
            "leased": False,
        }
        assert capture_tasks(namespace_id="ns", limit=10) == []

    def test_valid_leases_and_other_states_are_untouched(self):
        make_namespace("ns")
        make_tasks("ns", 3, prefix="leased")
        capture_tasks(namespace_id="ns", limit=3)
        make_tasks("ns", 2, prefix="idle")
        make_tasks("ns", 2, prefix="done", status="done")
        make_tasks("ns", 2, prefix="failed", status="failed")
        assert reclaim_expired_leases().reclaimed == 0
        assert task_state("leased000000")["status"] == "in_progress"
        assert task_state("idle000000")["status"] == "idle"

    def test_sweeping_twice_reclaims_each_expiry_once(self):
        make_namespace("ns")
        make_task("t", retries_left=2)
        lease_and_expire("t")
        assert reclaim_expired_leases().reclaimed == 1
        assert reclaim_expired_leases().reclaimed == 0
        assert task_state("t")["retries_left"] == 2

    def test_sweep_works_in_batches_until_none_are_left(self):
        make_namespace("ns")
        make_tasks("ns", 30)
        for row in capture_tasks(namespace_id="ns", limit=30):
            age_task(row.id, 3600)
        result = reclaim_expired_leases(batch_size=7)
        assert result.reclaimed == 30
        assert result.batches == 5

    def test_sweep_records_its_last_run(self):
        from tasks_app.sweeper import RECLAIM_JOB, last_run

        make_namespace("ns")
        make_task("t")
        lease_and_expire("t")
        reclaim_expired_leases()
        record = last_run(RECLAIM_JOB)
        assert record is not None
        assert record.affected == 1


@pytest.mark.django_db(transaction=True)
class TestReclaimConcurrency:
    def test_two_overlapping_sweeps_touch_disjoint_rows_and_the_total_is_exact(self):
        make_namespace("ns")
        make_tasks("ns", 3000, retries_left=1)
        capture_tasks(namespace_id="ns", limit=1000)
        capture_tasks(namespace_id="ns", limit=1000)
        capture_tasks(namespace_id="ns", limit=1000)
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE tasks_app_task SET updated_at = updated_at - interval '1 hour', "
                "lease_expires_at = lease_expires_at - interval '1 hour', "
                "available_at = available_at - interval '1 hour'"
            )
        results = run_in_threads(2, lambda _: reclaim_expired_leases(batch_size=50))
        assert sum(r.reclaimed for r in results) == 3000
        assert all(r.reclaimed > 0 for r in results)  # both really took part
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT status, retries_left, count(*) FROM tasks_app_task GROUP BY 1, 2"
            )
            assert cursor.fetchall() == [("failed", 1, 3000)]

    def test_a_sweep_holding_its_locks_does_not_block_a_capture_elsewhere(self):
        make_namespace("ns")
        make_namespace("busy")
        make_tasks("busy", 50, prefix="b")
        for row in capture_tasks(namespace_id="busy", limit=50):
            age_task(row.id, 3600)
        make_tasks("ns", 5)
        sweep_locked = threading.Event()
        release_sweep = threading.Event()

        def slow_sweep() -> None:
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(lease.RECLAIM_EXPIRED, {"batch": 10_000})
                    sweep_locked.set()
                    release_sweep.wait(10)
            finally:
                connections.close_all()

        thread = threading.Thread(target=slow_sweep)
        thread.start()
        try:
            assert sweep_locked.wait(10)
            with connection.cursor() as cursor:
                # Fail instead of waiting if the capture queued behind the sweep.
                cursor.execute("SET lock_timeout = '2s'")
            assert len(capture_tasks(namespace_id="ns", limit=5)) == 5
        finally:
            release_sweep.set()
            thread.join()
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")

    def test_a_sweep_skips_a_lease_another_transaction_holds(self):
        make_namespace("ns")
        make_tasks("ns", 2)
        for row in capture_tasks(namespace_id="ns", limit=2):
            age_task(row.id, 3600)
        held = threading.Event()
        done = threading.Event()

        def hold_row() -> None:
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute("SELECT id FROM tasks_app_task WHERE id = 't000000' FOR UPDATE")
                    held.set()
                    done.wait(10)
            finally:
                connections.close_all()

        thread = threading.Thread(target=hold_row)
        thread.start()
        try:
            assert held.wait(10)
            assert reclaim_expired_leases().reclaimed == 1
            assert task_state("t000000")["status"] == "in_progress"
        finally:
            done.set()
            thread.join()
        assert reclaim_expired_leases().reclaimed == 1
        assert task_state("t000000")["status"] == "failed"

    def test_a_release_racing_a_sweep_ends_in_exactly_one_of_the_two_outcomes(self):
        make_namespace("ns")
        outcomes: set[str] = set()
        rng = random.Random(20261201)
        for round_ in range(200):
            if len(outcomes) == 2:
                break
            task_id = f"race{round_}"
            make_task(task_id, retries_left=1)
            lease_and_expire(task_id)
            # Who starts first varies by a fraction of a statement's time, so
            # the rounds reach both orders.
            delays = (rng.uniform(0, 0.004), rng.uniform(0, 0.004))

            def act(index: int, task_id: str = task_id, delays=delays):
                time.sleep(delays[index])
                if index == 0:
                    return release_tasks(task_ids=[task_id], status="done")
                return reclaim_expired_leases()

            release, sweep = run_in_threads(2, act)
            state = task_state(task_id)
            if release.released:
                assert sweep.reclaimed == 0
                assert state["status"] == "done"
                outcomes.add("release won")
            else:
                assert sweep.reclaimed == 1
                assert "failed, not in_progress" in release.errors[0].detail
                assert state["status"] == "failed"
                outcomes.add("sweep won")
        assert outcomes == {"release won", "sweep won"}


@pytest.mark.django_db
class TestRetention:
    def test_purge_deletes_only_done_tasks_older_than_the_cutoff(self):
        make_namespace("ns")
        make_tasks("ns", 3, prefix="old", status="done")
        make_tasks("ns", 2, prefix="new", status="done")
        make_tasks("ns", 2, prefix="idle")
        make_tasks("ns", 2, prefix="failed", status="failed", retries_left=0)
        for i in range(3):
            age_task(f"old{i:06d}", 8 * 86400)
        for i in range(2):
            age_task(f"failed{i:06d}", 30 * 86400)
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement_timestamp()")
            (now,) = cursor.fetchone()
        deleted = purge_done_tasks(older_than=timedelta(days=7), now=now)
        assert deleted == 3
        with connection.cursor() as cursor:
            cursor.execute("SELECT id FROM tasks_app_task ORDER BY id")
            remaining = [row[0] for row in cursor.fetchall()]
        assert remaining == [
            "failed000000",
            "failed000001",
            "idle000000",
            "idle000001",
            "new000000",
            "new000001",
        ]

    def test_purge_with_injected_time_in_batches(self):
        make_namespace("ns")
        make_tasks("ns", 25, status="done")
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement_timestamp()")
            (now,) = cursor.fetchone()
        assert purge_done_tasks(older_than=timedelta(days=1), now=now) == 0
        later = now + timedelta(days=1, seconds=1)
        assert purge_done_tasks(older_than=timedelta(days=1), now=later, batch_size=10) == 25


@pytest.fixture
def up_for_long(monkeypatch):
    """This web process has been up for an hour (past its start-up grace)."""
    import time

    from taskq_project import views

    monkeypatch.setattr(views, "_STARTED", time.monotonic() - 3600)


@pytest.mark.django_db
class TestHealth:
    def test_health_is_starting_until_the_sweeper_had_its_chance(self, anon, monkeypatch, settings):
        import time

        from taskq_project import views

        settings.TASKQ_SWEEP_SECONDS = 5
        monkeypatch.setattr(views, "_STARTED", time.monotonic() - 14)
        r = anon.get("/healthz")
        assert r.status_code == 200
        assert r.json()["status"] == "starting"
        assert r.json()["sweeper"]["ok"] is False
        monkeypatch.setattr(views, "_STARTED", time.monotonic() - 16)
        assert anon.get("/healthz").json()["status"] == "degraded"

    def test_health_is_degraded_until_the_sweeper_has_run(self, anon, up_for_long):
        body = anon.get("/healthz").json()
        assert body["status"] == "degraded"
        assert body["database"]["ok"] is True
        assert body["sweeper"]["ok"] is False
        reclaim_expired_leases()
        r = anon.get("/healthz")
        assert r.status_code == 200
        assert r.json()["status"] == "ok"
        assert r.json()["sweeper"]["last_reclaimed"] == 0

    def test_health_is_degraded_when_the_sweeper_stopped_three_intervals_ago(
        self, anon, settings, up_for_long
    ):
        settings.TASKQ_SWEEP_SECONDS = 5
        reclaim_expired_leases()
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE tasks_app_sweeprecord SET finished_at = finished_at - interval '16 seconds'"
            )
        r = anon.get("/healthz")
        assert r.status_code == 200
        assert r.json()["status"] == "degraded"
        assert "no run for" in r.json()["sweeper"]["detail"]
