"""Namespaces in the admin: register, change settings, deregister (with their
tasks), counts.

`NamespaceAdmin` is registered by tasks_app.admin, as the namespace's page:
that subclass adds the tasks' figures and the controls over captures, which
are tasks_app's (namespaces_app never imports tasks_app)."""

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from namespaces_app import services
from namespaces_app.models import History, Namespace
from namespaces_app.services import Backoff, Settings
from taskq_project.admin_site import timestamp
from taskq_project.counting import count_or_estimate
from taskq_project.ids import id_problem

# The API's bounds (namespaces_app.serializers, which the admin does not
# import: DRF stays at the API's edge); tests hold the two to each other.
MAX_INT = 2_147_483_647
MIN_BACKOFF_SECONDS = 0.001
MAX_BACKOFF_SECONDS = 366 * 24 * 3600
# A backoff given a base but no cap is capped here, as by the API.
DEFAULT_BACKOFF_MAX = 3600.0

HISTORY_CHOICES = [
    (History.FAILURES.value, "Failures: failed, expired, handed back and cancelled attempts"),
    (History.ALL.value, "All: done attempts too (one more write per release)"),
]
SETTINGS_FIELDS = ["default_timeout", "default_retries", "history", "max_in_flight"]
BACKOFF_FIELDS: list[str] = ["backoff_base", "backoff_max", "backoff_jitter"]


class NamespaceForm(forms.ModelForm):
    """A namespace's id (when registered) and settings, validated as the API
    validates them, so a save never reaches a database constraint."""

    default_timeout = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_INT,
        label="Default timeout",
        help_text="Lease length in seconds of a task registered without one. Empty: 300.",
    )
    default_retries = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_INT,
        label="Default retries",
        help_text="Retries of a task registered without its own. Empty: 3.",
    )
    backoff_base = forms.FloatField(
        required=False,
        min_value=MIN_BACKOFF_SECONDS,
        max_value=MAX_BACKOFF_SECONDS,
        label="Backoff base",
        help_text="Seconds the first failure or expiry holds the task back, doubled at "
        "each attempt after. Empty: no backoff, a failed task is retried at once.",
    )
    backoff_max = forms.FloatField(
        required=False,
        min_value=MIN_BACKOFF_SECONDS,
        max_value=MAX_BACKOFF_SECONDS,
        label="Backoff max",
        help_text="The longest hold in seconds, at least the base. "
        "Empty: the larger of the base and 3600.",
    )
    backoff_jitter = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        label="Backoff jitter",
        help_text="0 to 1: up to this share of each hold is taken off at random, so "
        "tasks that failed together are not retried together. Empty: 0.",
    )
    max_in_flight = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_INT,
        label="Max in flight",
        help_text="The most valid leases the namespace's tasks may hold at once; captures "
        "lease no more. Empty: no limit.",
    )
    # Not given (a form posted with the id alone): the model's default.
    history = forms.TypedChoiceField(
        choices=HISTORY_CHOICES,
        required=False,
        empty_value=History.FAILURES.value,
        initial=History.FAILURES.value,
        label="Attempt history",
        help_text="Which ended attempts each task keeps (its last 10).",
    )

    class Meta:
        model = Namespace
        fields = ["id", *SETTINGS_FIELDS, *BACKOFF_FIELDS]

    def clean_id(self) -> str:
        value = self.cleaned_data["id"]
        problem = id_problem(value)
        if problem:
            raise forms.ValidationError(f"Id {problem}.")
        return value

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if any(name in self.errors for name in BACKOFF_FIELDS):
            return data
        base, maximum = data.get("backoff_base"), data.get("backoff_max")
        jitter = data.get("backoff_jitter")
        if base is None:
            if maximum is not None:
                self.add_error("backoff_max", "A maximum needs a base: set one, or clear this.")
            if jitter:
                self.add_error("backoff_jitter", "Jitter needs a base: set one, or clear this.")
            data["backoff_jitter"] = 0.0
            return data
        if maximum is None:
            data["backoff_max"] = max(base, DEFAULT_BACKOFF_MAX)
        elif maximum < base:
            self.add_error("backoff_max", f"Must be at least the base ({base:g} s).")
        if jitter is None:
            data["backoff_jitter"] = 0.0
        return data

    def settings(self, *, changed_only: bool) -> Settings:
        """The settings as `namespaces_app.services` takes them: all of them,
        or only those changed on the form. The backoff goes as one."""
        data = self.cleaned_data
        changed = set(self.changed_data) if changed_only else {*SETTINGS_FIELDS, *BACKOFF_FIELDS}
        settings = Settings({name: data[name] for name in SETTINGS_FIELDS if name in changed})
        if changed & set(BACKOFF_FIELDS):
            base = data["backoff_base"]
            settings["retry_backoff"] = (
                None
                if base is None
                else Backoff(base=base, max=data["backoff_max"], jitter=data["backoff_jitter"])
            )
        return settings


class NamespaceAdmin(admin.ModelAdmin):
    form = NamespaceForm
    list_display = [
        "id",
        "captures",
        "created",
        "default_timeout",
        "default_retries",
        "backoff",
        "history",
        "task_count",
        "tasks_link",
    ]
    search_fields = ["id"]
    readonly_fields = ["created"]
    fieldsets = [
        (None, {"fields": ["id", "created"]}),
        (
            "Defaults for new tasks",
            {
                "fields": ["default_timeout", "default_retries"],
                "description": "Tasks already registered keep what they were given.",
            },
        ),
        (
            "Retry backoff",
            {
                "fields": [*BACKOFF_FIELDS],
                "description": "Attempt n's failure or expiry holds the task back "
                "min(max, base * 2^(n-1)) seconds, less a random share of up to the jitter. "
                "A change applies to failures from then on.",
            },
        ),
        ("Attempt history", {"fields": ["history"]}),
        ("Concurrency", {"fields": ["max_in_flight"]}),
    ]

    @admin.display(description="created at", ordering="created_at")
    def created(self, namespace: Namespace) -> str:
        return timestamp(namespace.created_at)

    @admin.display(description="captures", ordering="paused_at")
    def captures(self, namespace: Namespace) -> str:
        if namespace.paused_at is None:
            return "running"
        return format_html(
            '<strong class="taskq-paused">paused</strong> since {}', timestamp(namespace.paused_at)
        )

    @admin.display(description="backoff")
    def backoff(self, namespace: Namespace) -> str:
        backoff = services.backoff_of(namespace)
        if backoff is None:
            return "none (retried at once)"
        text = f"{backoff.base:g} s doubling, at most {backoff.max:g} s"
        return f"{text}, jitter {backoff.jitter:g}" if backoff.jitter else text

    @admin.display(description="tasks")
    def task_count(self, namespace: Namespace) -> str:
        count, estimated = count_or_estimate(namespace.tasks.all())
        return f"≈{count}" if estimated else str(count)

    @admin.display(description="")
    def tasks_link(self, namespace: Namespace) -> str:
        url = reverse("admin:tasks_app_task_changelist")
        query = urlencode({"namespace__id__exact": namespace.pk})
        return format_html('<a href="{}?{}">View tasks</a>', url, query)

    def get_readonly_fields(self, request: HttpRequest, obj: Namespace | None = None) -> Any:
        # The id is the primary key: renaming would orphan every task.
        return ["id", "created"] if obj is not None else ["created"]

    def save_model(
        self, request: HttpRequest, obj: Namespace, form: NamespaceForm, change: bool
    ) -> None:
        if change:
            services.change_namespace(
                namespace_id=obj.pk, settings=form.settings(changed_only=True)
            )
        else:
            registered = services.register_namespace(
                namespace_id=obj.id, settings=form.settings(changed_only=False)
            )
            obj.created_at = registered.created_at

    def delete_model(self, request: HttpRequest, obj: Namespace) -> None:
        services.delete_namespace(namespace_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Namespace]) -> None:
        for namespace_id in queryset.values_list("pk", flat=True):
            services.delete_namespace(namespace_id=namespace_id)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, ...]:
        """What the confirmation page lists: the namespaces and how many tasks go with them.

        Django's default collects every related object for display, which
        would load millions of tasks; a count says what the operator needs.
        """
        namespaces = list(objs)
        ids = [ns.pk for ns in namespaces]
        # The tasks' model through their foreign key: namespaces_app never
        # imports tasks_app, which builds on it.
        tasks = Namespace.tasks.rel.related_model._default_manager  # type: ignore[attr-defined]
        count, estimated = count_or_estimate(tasks.filter(namespace_id__in=ids))
        summary = f"about {count}" if estimated else str(count)
        listed = [format_html("Namespace: {} and all its tasks", ns.pk) for ns in namespaces]
        model_count = {"namespaces": len(namespaces), "tasks": summary}
        perms_needed = set()
        if not request.user.has_perm("tasks_app.delete_task"):
            perms_needed.add("task")
        return listed, model_count, perms_needed, []
