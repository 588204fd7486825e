from django.db import models
from django.db.models import F, Q

from taskq_project.ids import MAX_ID_LENGTH

# /v1/namespace/{id}/pause, /resume, /stats and /purge are endpoints: no id
# may end so.
RESERVED_NAMESPACE_ID_SUFFIXES = ("/pause", "/resume", "/stats", "/purge")


class History(models.TextChoices):
    """Which ended attempts a namespace's tasks keep (tasks_app's attempt history)."""

    # Failed, expired, handed back and cancelled attempts: the ones an operator
    # looks into. A done attempt is left out, which keeps the hot path of a
    # release one write per task.
    FAILURES = "failures"
    ALL = "all"


class Namespace(models.Model):
    """A named group of tasks that workers capture from, with its settings.

    Each setting is optional: NULL keeps the product's default (a task's own
    timeout and retries of 300 s and 3, an immediate retry).
    """

    id = models.CharField(primary_key=True, max_length=MAX_ID_LENGTH)
    created_at = models.DateTimeField(db_default=models.functions.Now())
    # What a task registered without `timeout` or `retries_left` gets.
    default_timeout = models.IntegerField(null=True, blank=True)
    default_retries = models.IntegerField(null=True, blank=True)
    # Exponential retry backoff, when `backoff_base` is set: the n-th
    # attempt's failure or expiry holds the task back
    # min(backoff_max, backoff_base * 2^(n-1)) seconds, less a random share
    # of up to `backoff_jitter` of that.
    backoff_base = models.FloatField(null=True, blank=True)
    backoff_max = models.FloatField(null=True, blank=True)
    backoff_jitter = models.FloatField(db_default=0.0, default=0.0)
    history = models.CharField(
        max_length=16,
        choices=History.choices,
        db_default=History.FAILURES,
        default=History.FAILURES,
    )
    # Set while an operator has paused the namespace: captures lease nothing
    # (long-polling ones keep waiting); registrations and leases go on.
    paused_at = models.DateTimeField(null=True, blank=True)
    # At most this many valid leases at once in the namespace; NULL: no limit.
    max_in_flight = models.IntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The namespaces that keep done attempts too, read by each release.
            models.Index(
                fields=["id"], name="namespace_full_history_idx", condition=Q(history="all")
            ),
            # The namespaces with max_in_flight, read by each release (their
            # waiting captures are woken when a lease ends).
            models.Index(
                fields=["id"],
                name="namespace_limited_idx",
                condition=Q(max_in_flight__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(default_timeout__gte=1) | Q(default_timeout__isnull=True),
                name="namespace_default_timeout_range",
            ),
            models.CheckConstraint(
                condition=Q(default_retries__gte=0) | Q(default_retries__isnull=True),
                name="namespace_default_retries_range",
            ),
            # Backoff is all or nothing: a base with its cap.
            models.CheckConstraint(
                condition=Q(backoff_base__isnull=True, backoff_max__isnull=True)
                | Q(backoff_base__gt=0, backoff_max__gte=F("backoff_base")),
                name="namespace_backoff_consistent",
            ),
            models.CheckConstraint(
                condition=Q(backoff_jitter__gte=0, backoff_jitter__lte=1),
                name="namespace_backoff_jitter_range",
            ),
            models.CheckConstraint(
                condition=Q(max_in_flight__gte=1) | Q(max_in_flight__isnull=True),
                name="namespace_max_in_flight_range",
            ),
        ]

    def __str__(self) -> str:
        return self.id
