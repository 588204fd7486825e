from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from namespaces_app.models import Namespace
from taskq_project.ids import MAX_ID_LENGTH
from tasks_app.lease import CATEGORY, PRIORITIES, STATE_CONSISTENT, TaskStatus

# PostgreSQL `integer` bounds: values beyond them are refused at the edge
# instead of overflowing in the database.
MAX_INT = 2_147_483_647
DEFAULT_TIMEOUT = 300
DEFAULT_RETRIES = 3
# They name endpoints under /v1/task/, so a task of that id could not be read.
RESERVED_TASK_IDS = frozenset({"capture", "release", "extend"})
# `/v1/task/{id}/attempts` lists a task's attempts, so no id may end so.
RESERVED_TASK_ID_SUFFIXES = ("/attempts",)
MIN_PRIORITY, MAX_PRIORITY = PRIORITIES[0], PRIORITIES[-1]


class TaskQuerySet(models.QuerySet["Task"]):
    def expired(self) -> "TaskQuerySet":
        """In-progress tasks whose lease has run out (served by `task_lease_expiry_idx`)."""
        return self.filter(CATEGORY["expired"].q)


class Task(models.Model):
    """A unit of work that workers lease, finish or fail.

    Its states, and the derived columns `available_at` (when it becomes
    capturable) and `lease_expires_at` (set exactly while it is in progress),
    are those of `tasks_app.lease.STATES`; the CHECK constraint
    `task_state_consistent` is built from them, so no code path (SQL, ORM,
    admin) can store a task that capture would treat otherwise than its
    status says.
    """

    # The C collation orders ids byte by byte, so the primary key itself serves
    # the admin's prefix search (LIKE 'x%'): no second, pattern-ops index to
    # maintain on every capture, release and sweep.
    id = models.CharField(primary_key=True, max_length=MAX_ID_LENGTH, db_collation="C")
    namespace = models.ForeignKey(
        Namespace,
        on_delete=models.CASCADE,
        related_name="tasks",
        # Covered by the composite `task_namespace_id_idx` below.
        db_index=False,
    )
    timeout = models.IntegerField(default=DEFAULT_TIMEOUT, help_text="Lease length in seconds.")
    retries_left = models.IntegerField(default=DEFAULT_RETRIES)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.IDLE)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())
    available_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The fence of the latest lease: new at every capture, and kept after the
    # lease ends, so a late release by its holder can be told (not in
    # progress any more) from one by an earlier holder (stale). Operators
    # clear it when they end a lease, which makes the holder's token stale.
    # Never rendered outside the capture and extend answers.
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    # How many times the task has been captured (1 during its first lease).
    attempt = models.IntegerField(db_default=0, default=0, editable=False)
    # When the latest lease began and the name of the API token that took it,
    # for the attempt history (`Attempt`) once it ends. NULL, not "": no
    # token took it (registered in progress, or captured in-process).
    leased_at = models.DateTimeField(null=True, blank=True, editable=False)
    leased_by = models.TextField(null=True, blank=True, editable=False)  # noqa: DJ001
    # Capture leases lower numbers first (beanstalkd's and Oban's convention).
    priority = models.SmallIntegerField(db_default=0, default=0)
    # What the worker needs, as given at registration (jsonb).
    payload = models.JSONField(null=True, blank=True)
    # The latest `done` release's result, and the latest error a `failed` or
    # `idle` release gave.
    result = models.JSONField(null=True, blank=True, editable=False)
    last_error = models.JSONField(null=True, blank=True, editable=False)

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["namespace_id", "id"]
        indexes = [
            # Capture, one priority level at a time: `WHERE namespace_id = $1
            # AND priority = $2 AND available_at <= now() ORDER BY
            # available_at LIMIT n`, a range scan that stops at now, however
            # many tasks wait for later. Partial, so done and dead tasks
            # never enter it and the scan stays short as they pile up.
            # INCLUDE status: the dashboard counts the active tasks of each
            # namespace by status from this index alone.
            models.Index(
                fields=["namespace", "priority", "available_at"],
                name="task_capture_priority_idx",
                condition=Q(available_at__isnull=False),
                include=["status"],
            ),
            # Listing a namespace's tasks by id (keyset pagination) and the
            # foreign key's cascade on namespace delete.
            models.Index(fields=["namespace", "id"], name="task_namespace_id_idx"),
            # The lease sweeper: expired leases in expiry order. INCLUDE
            # namespace: the dashboard counts leases per namespace from it.
            models.Index(
                fields=["lease_expires_at"],
                name="task_lease_expiry_idx",
                condition=Q(status="in_progress"),
                include=["namespace"],
            ),
            # Retention (per namespace, oldest first, so each purge batch is a
            # short range scan) and the dashboard's count of done tasks.
            models.Index(
                fields=["namespace", "updated_at"],
                name="task_done_idx",
                condition=Q(status="done"),
            ),
            # Failed tasks waiting for their retry, counted by the dashboard
            # (in the capture index they would be mixed with every idle task).
            models.Index(
                fields=["namespace"],
                name="task_failed_retry_idx",
                condition=Q(status="failed", retries_left__gt=0),
            ),
            # Tasks failed for good, which operators look for and requeue.
            models.Index(
                fields=["namespace", "updated_at"],
                name="task_failed_for_good_idx",
                condition=Q(status="failed", retries_left=0),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=TaskStatus.values), name="task_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(timeout__gte=1, timeout__lte=MAX_INT), name="task_timeout_range"
            ),
            models.CheckConstraint(
                condition=Q(retries_left__gte=0, retries_left__lte=MAX_INT),
                name="task_retries_left_range",
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=MIN_PRIORITY, priority__lte=MAX_PRIORITY),
                name="task_priority_range",
            ),
            models.CheckConstraint(condition=STATE_CONSISTENT, name="task_state_consistent"),
        ]

    def __str__(self) -> str:
        return self.id


class SweepRecord(models.Model):
    """The last run of a periodic job, for `/healthz` and operators.

    One row per job name, upserted at the end of each run: any worker may run
    the job, and the web processes that report on it are separate processes.
    """

    name = models.CharField(primary_key=True, max_length=64)
    finished_at = models.DateTimeField()
    affected = models.BigIntegerField(default=0)
    # What every run so far affected, in all.
    affected_total = models.BigIntegerField(default=0, db_default=0)
    detail = models.JSONField(default=dict)

    def __str__(self) -> str:
        return f"{self.name} at {self.finished_at:%Y-%m-%d %H:%M:%S}"


class Throughput(models.Model):
    """Tasks captured and finished per namespace, one row per statement that
    captured or finished some.

    Append-only, so writers never contend on a counter row. The sweeper
    merges rows more than a few seconds old into a row per namespace and
    minute, and folds rows past two hours into `ThroughputTotal`
    (tasks_app.lease), so the log stays a row per namespace and minute, and
    the last seconds' rows, whatever the load. The dashboard sums
    the last hour per minute; the metrics' counters sum it all.
    """

    # Deleted with its namespace by Django (the namespace services delete
    # through the ORM), never by a database constraint: a foreign key would
    # have every capture and release lock the namespace's row.
    namespace = models.ForeignKey(
        Namespace,
        on_delete=models.CASCADE,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    at = models.DateTimeField()
    captured = models.IntegerField(default=0, db_default=0)
    done = models.IntegerField(default=0, db_default=0)
    failed = models.IntegerField(default=0, db_default=0)
    # Leases that ran out (the sweeper's, and those a capture took over).
    expired = models.IntegerField(default=0, db_default=0)

    class Meta:
        indexes = [models.Index(fields=["at"], name="throughput_at_idx")]

    def __str__(self) -> str:
        return f"{self.namespace_id} {self.at:%H:%M}: {self.done} done, {self.failed} failed"


class ThroughputTotal(models.Model):
    """What a namespace's throughput log held before the sweeper folded it in:
    with the log's rows, every task captured and finished since the namespace
    was created. Written by the sweeper alone."""

    # As Throughput's: deleted with the namespace, no constraint.
    namespace = models.OneToOneField(
        Namespace,
        primary_key=True,
        on_delete=models.CASCADE,
        db_constraint=False,
        related_name="+",
    )
    captured = models.BigIntegerField(default=0)
    done = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)
    expired = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.namespace_id}: {self.captured} captured, {self.done} done"


class Outcome(models.TextChoices):
    """How an attempt ended."""

    DONE = "done"
    FAILED = "failed"
    HANDED_BACK = "handed_back"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class Attempt(models.Model):
    """An ended lease of a task: the attempt history (the last `HISTORY` kept).

    Written by the statement that ends the lease (tasks_app.lease); the lease
    in progress is the task's own row. Deleted with its task (ON DELETE
    CASCADE in the database, so the statements' plain DELETEs cascade too).
    """

    pk = models.CompositePrimaryKey("task_id", "attempt")
    # The primary key (task_id, attempt) serves every lookup by task; the
    # constraint is the migration's, with ON DELETE CASCADE.
    task = models.ForeignKey(
        Task,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="attempts",
    )
    attempt = models.IntegerField()
    captured_at = models.DateTimeField(null=True)
    ended_at = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error = models.JSONField(null=True)
    result = models.JSONField(null=True)
    leased_by = models.TextField(null=True)  # noqa: DJ001 (as Task.leased_by)

    class Meta:
        ordering = ["task_id", "-attempt"]

    def __str__(self) -> str:
        return f"{self.task_id} attempt {self.attempt}: {self.outcome}"
