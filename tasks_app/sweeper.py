"""Periodic maintenance of the task table: lease reclaim and retention.

Run by Celery beat (`tasks_app.tasks`), callable from anywhere. Each batch
is its own short transaction; nothing here holds a lock across batches.
"""

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from namespaces_app.models import Namespace
from tasks_app import lease
from tasks_app.lease import NOW
from tasks_app.models import SweepRecord

logger = logging.getLogger(__name__)

# At most this many rows per statement, so one batch's transaction and locks
# stay short even when a million leases expire at once.
SWEEP_BATCH = 10_000
RECLAIM_JOB = "reclaim_expired_leases"
PURGE_JOB = "purge_done_tasks"


@dataclass(frozen=True)
class ReclaimResult:
    reclaimed: int
    retryable: int
    failed_for_good: int
    batches: int
    seconds: float


def reclaim_expired_leases(*, batch_size: int = SWEEP_BATCH) -> ReclaimResult:
    """Turn every expired lease into a failed task, in batches until none is left.

    Safe to run concurrently with itself, captures and releases (SKIP LOCKED:
    each expiry is handled by exactly one sweep). Records the run in
    `SweepRecord` and logs it.
    """
    started = timezone.now()
    retryable = failed_for_good = batches = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(lease.RECLAIM_EXPIRED, {"batch": batch_size})
            outcomes = [row[0] for row in cursor.fetchall()]
        batches += 1
        retryable += sum(outcomes)
        failed_for_good += len(outcomes) - sum(outcomes)
        if len(outcomes) < batch_size:
            break
    with connection.cursor() as cursor:
        cursor.execute(lease.COMPACT_THROUGHPUT)
        cursor.execute(lease.FOLD_THROUGHPUT)
    result = ReclaimResult(
        reclaimed=retryable + failed_for_good,
        retryable=retryable,
        failed_for_good=failed_for_good,
        batches=batches,
        seconds=(timezone.now() - started).total_seconds(),
    )
    _record(RECLAIM_JOB, affected=result.reclaimed, detail=result.__dict__)
    logger.info(
        "reclaimed %d expired leases (%d to retry, %d failed for good) in %.3fs",
        result.reclaimed,
        result.retryable,
        result.failed_for_good,
        result.seconds,
    )
    return result


def purge_done_tasks(
    *, older_than: timedelta, now: datetime | None = None, batch_size: int = SWEEP_BATCH
) -> int:
    """Delete done tasks last updated more than `older_than` before `now`.

    `now` defaults to the database clock. Returns how many were deleted.
    """
    if now is None:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {NOW}")
            (now,) = cursor.fetchone()  # type: ignore[misc]
    assert now is not None
    cutoff = now - older_than
    deleted = 0
    # Namespace by namespace: each batch is then a range scan of
    # `task_done_idx` on (namespace_id, updated_at).
    for namespace_id in Namespace.objects.values_list("pk", flat=True):
        while True:
            with connection.cursor() as cursor:
                cursor.execute(
                    lease.PURGE_DONE,
                    {"namespace_id": namespace_id, "cutoff": cutoff, "batch": batch_size},
                )
                count = cursor.rowcount
            deleted += count
            if count < batch_size:
                break
    _record(PURGE_JOB, affected=deleted, detail={"cutoff": cutoff.isoformat()})
    logger.info("purged %d done tasks last updated before %s", deleted, cutoff.isoformat())
    return deleted


def _record(name: str, *, affected: int, detail: dict[str, object]) -> None:
    # An upsert, not update_or_create: two sweeps finishing at once must not
    # race to insert the first record.
    with connection.cursor() as cursor:
        cursor.execute(lease.RECORD_RUN, [name, affected, affected, json.dumps(detail)])


def last_run(name: str) -> SweepRecord | None:
    return SweepRecord.objects.filter(pk=name).first()


def sweeper_health(*, interval_seconds: int) -> dict[str, object]:
    """The sweeper's state for `/healthz`.

    `ok` is false when the sweeper has not finished a run for three intervals
    (or never has): expired leases are then only reclaimed lazily by capture,
    and operators should know. Ages are measured on the database clock.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT finished_at, affected, "
            f"EXTRACT(EPOCH FROM {NOW} - finished_at) "
            "FROM tasks_app_sweeprecord WHERE name = %s",
            [RECLAIM_JOB],
        )
        row = cursor.fetchone()
    limit = 3 * interval_seconds
    if row is None:
        return {"ok": False, "detail": "the lease sweeper has never run", "last_run": None}
    finished_at, affected, age = row
    ok = float(age) <= limit
    return {
        "ok": ok,
        "detail": "running"
        if ok
        else f"no run for {float(age):.0f}s (expected every {interval_seconds}s)",
        "last_run": finished_at.isoformat(),
        "last_reclaimed": affected,
        "seconds_since_last_run": round(float(age), 3),
    }
