"""Operators' controls over tasks.

A task's page is read-only, with no Save buttons: status changes only
through the actions below, and every action goes through
`tasks_app.services`, which applies the same lease rules as the API.
"""

import json
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import quote, unquote
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import (
    Case,
    CharField,
    Q,
    QuerySet,
    Value,
    When,
)
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from namespaces_app.admin import NamespaceAdmin
from namespaces_app.exceptions import NamespaceNotFound
from namespaces_app.models import Namespace
from taskq_project.admin_site import age, timestamp
from taskq_project.counting import EstimatedCountPaginator, count_or_estimate
from taskq_project.ids import id_problem
from tasks_app import services
from tasks_app.charts import throughput_chart
from tasks_app.dashboard import PUBLIC_STATE, namespace_ended, namespace_figures
from tasks_app.lease import CATEGORIES, CATEGORY, PRIORITIES
from tasks_app.models import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MAX_INT,
    RESERVED_TASK_IDS,
    Outcome,
    Task,
)
from tasks_app.services import BulkResult, NewTask, OperatorAction

STATE_FILTERS: dict[str, tuple[str, Q]] = {c.name: (c.label, c.q) for c in CATEGORIES}


class StateFilter(admin.SimpleListFilter):
    """Status as operators think of it: a lease can be expired, a failure final."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in STATE_FILTERS.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        choice = self.value()
        if choice in STATE_FILTERS:
            return queryset.filter(STATE_FILTERS[choice][1])
        return queryset


class PriorityFilter(admin.SimpleListFilter):
    """The priority levels from the product's range, never a DISTINCT over tasks."""

    title = "priority"
    parameter_name = "priority"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        first, last = PRIORITIES[0], PRIORITIES[-1]
        labels = {first: f"{first} (first)", last: f"{last} (last)"}
        return [(str(p), labels.get(p, str(p))) for p in PRIORITIES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        if self.value() in {str(p) for p in PRIORITIES}:
            return queryset.filter(priority=int(cast(str, self.value())))
        return queryset


class NamespaceFilter(admin.SimpleListFilter):
    """Namespaces from their own (small) table, never a DISTINCT over tasks."""

    title = "namespace"
    parameter_name = "namespace__id__exact"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(ns, ns) for ns in Namespace.objects.values_list("pk", flat=True)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        if self.value():
            return queryset.filter(namespace_id=self.value())
        return queryset


class TaskAddForm(forms.ModelForm):
    timeout = forms.IntegerField(min_value=1, max_value=MAX_INT, initial=DEFAULT_TIMEOUT)
    retries_left = forms.IntegerField(min_value=0, max_value=MAX_INT, initial=DEFAULT_RETRIES)

    class Meta:
        model = Task
        fields = ["id", "namespace", "timeout", "retries_left"]

    def clean_id(self) -> str:
        value = self.cleaned_data["id"]
        problem = id_problem(value)
        if problem:
            raise forms.ValidationError(f"Id {problem}.")
        if value in RESERVED_TASK_IDS:
            raise forms.ValidationError(f"{value!r} is reserved.")
        return value


class RequeueForm(forms.Form):
    reset_retries_to = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_INT,
        label="Reset retries left to",
        help_text="Leave empty to keep each task's retries as they are.",
    )


def _json_text(value: Any) -> str:
    """A JSON value indented for reading, keys in alphabetical order (jsonb
    keeps them shortest first); the template or format_html escapes it."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _tasks(count: int) -> str:
    return f"{count} task{'' if count == 1 else 's'}"


def _log(request: HttpRequest, label: str, result: BulkResult, scope: str) -> None:
    # What "Recent actions" shows is the repr: it says how many tasks the
    # action changed, which may be fewer than were selected.
    changed = f"{label} {_tasks(result.changed)}"
    if result.skipped_total:
        changed += f", {result.skipped_total} skipped"
    LogEntry.objects.create(
        user_id=cast(int, request.user.pk),
        content_type=ContentType.objects.get_for_model(Task),
        object_id=None,
        object_repr=changed[:200],
        action_flag=CHANGE,
        change_message=f"{label}: {result.summary()}, of {scope}.",
    )


def _report(request: HttpRequest, label: str, result: BulkResult) -> None:
    level = messages.SUCCESS if result.changed else messages.WARNING
    messages.add_message(request, level, f"{label}: {result.summary()}.")


def _operator_action(
    action: OperatorAction, label: str, permission: str, description: str | None = None
) -> Callable[[admin.ModelAdmin, HttpRequest, QuerySet[Task]], HttpResponse | None]:
    def run(
        modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Task]
    ) -> HttpResponse | None:
        return modeladmin.run_operator_action(request, queryset, action, label)  # type: ignore[attr-defined, no-any-return]

    run.__name__ = action.value
    return admin.action(
        description=description or f"{label} selected tasks", permissions=[permission]
    )(run)


# Each task's category (tasks_app.lease.CATEGORIES) on the lease clock, for
# the status column and the marks beside the times.
TASK_CATEGORY = Case(
    *[When(category.q, then=Value(category.name)) for category in CATEGORIES],
    default=Value(""),
    output_field=CharField(),
)
CATEGORY_LABEL = {category.name: category.label for category in CATEGORIES}


def _state_badge(category: str, fallback: str) -> str:
    return format_html(
        '<span class="taskq-state state-{}">{}</span>',
        category or "unknown",
        CATEGORY_LABEL.get(category, fallback),
    )


def namespace_url(namespace_id: str) -> str:
    return reverse("admin:namespaces_app_namespace_change", args=[quote(namespace_id)])


def task_list_url(**query: str) -> str:
    return f"{reverse('admin:tasks_app_task_changelist')}?{urlencode(query)}"


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "namespace_link",
        "state",
        "priority",
        "retries_left",
        "attempt",
        "updated",
        "next_time",
    ]
    list_filter = [NamespaceFilter, StateFilter, PriorityFilter]
    search_fields = ["id"]
    search_help_text = "Tasks whose id starts with the text (case-sensitive)."
    list_per_page = 100
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    ordering = ["namespace_id", "id"]
    actions = [
        # A scheduled task too: its delay is dropped.
        _operator_action(
            OperatorAction.REQUEUE,
            "Requeue",
            "change",
            "Requeue selected tasks (brings scheduled ones forward)",
        ),
        _operator_action(OperatorAction.CANCEL_LEASE, "Cancel the lease of", "change"),
        _operator_action(OperatorAction.MARK_DONE, "Mark done", "change"),
        _operator_action(OperatorAction.MARK_FAILED, "Mark failed", "change"),
        _operator_action(OperatorAction.DELETE, "Delete", "delete"),
    ]
    # A task's page, read-only: its columns, its lease, then what it carries
    # and its attempts.
    task_fields = [
        "id",
        "namespace_link",
        "state",
        "priority",
        "timeout",
        "retries_left",
        "created",
        "updated",
        "turn",
        "attempt",
    ]
    # Never the lease token: whoever reads it could end the lease.
    lease_fields = ["lease_holder", "lease_started", "lease_expiry"]
    work_fields = ["payload_json", "result_json", "last_error_json"]
    readonly_fields = [*task_fields, *lease_fields, *work_fields, "attempts_table"]
    fieldsets_of_a_task = [
        (None, {"fields": task_fields}),
        (
            "Lease",
            {
                "fields": lease_fields,
                "description": "Who holds the task and until when, while it is in progress.",
            },
        ),
        ("Work", {"fields": work_fields}),
        (
            "Attempts",
            {
                "fields": ["attempts_table"],
                "description": "Newest first: the lease in progress, if any, then the "
                "ended attempts the namespace's history keeps.",
            },
        ),
    ]

    class Media:
        css = {"all": ["taskq/task_admin.css"]}

    # Not sortable (the list is in namespace order anyway, and filtered by
    # one): a sorted column's header takes room for its sort controls.
    @admin.display(description="namespace")
    def namespace_link(self, task: Task) -> str:
        return format_html(
            '<a href="{}">{}</a>', namespace_url(task.namespace_id), task.namespace_id
        )

    @admin.display(description="status", ordering="status")
    def state(self, task: Task) -> str:
        return _state_badge(getattr(task, "category", ""), task.get_status_display())

    @admin.display(description="created at", ordering="created_at")
    def created(self, task: Task) -> str:
        return timestamp(task.created_at)

    @admin.display(description="updated at", ordering="updated_at")
    def updated(self, task: Task) -> str:
        return timestamp(task.updated_at)

    @admin.display(description="lease expiry", ordering="lease_expires_at")
    def lease_expiry(self, task: Task) -> str:
        if task.lease_expires_at is None:
            return "—"
        if getattr(task, "category", "") == "expired":
            return format_html(
                '{} <strong class="taskq-expired">expired</strong>',
                timestamp(task.lease_expires_at),
            )
        return timestamp(task.lease_expires_at)

    @admin.display(description="available at", ordering="available_at")
    def turn(self, task: Task) -> str:
        if task.available_at is None:
            return "—"
        if getattr(task, "category", "") == "scheduled":
            return format_html(
                '{} <strong class="taskq-scheduled">scheduled</strong>',
                timestamp(task.available_at),
            )
        return timestamp(task.available_at)

    @admin.display(description="available at / lease end", ordering="available_at")
    def next_time(self, task: Task) -> str:
        """The list's one column of what comes next: a leased task's lease
        end (its retry is due then at the earliest), else when the task's
        turn comes or came. One column, not two, so that the list's times
        stay on one line at 1,280 px."""
        if task.lease_expires_at is not None:
            if getattr(task, "category", "") == "expired":
                return self.lease_expiry(task)
            return timestamp(task.lease_expires_at)
        return self.turn(task)

    @admin.display(description="held by")
    def lease_holder(self, task: Task) -> str:
        if task.lease_expires_at is None:
            return "— (no lease)"
        # NULL: no API token took it (registered in progress, or captured
        # in-process).
        return task.leased_by or "— (no token name)"

    @admin.display(description="leased at")
    def lease_started(self, task: Task) -> str:
        return timestamp(task.leased_at) if task.lease_expires_at is not None else "—"

    def _json_field(self, value: Any) -> str:
        if value is None:
            return self.get_empty_value_display()
        return format_html('<pre class="taskq-json">{}</pre>', _json_text(value))

    @admin.display(description="payload")
    def payload_json(self, task: Task) -> str:
        return self._json_field(task.payload)

    @admin.display(description="result")
    def result_json(self, task: Task) -> str:
        return self._json_field(task.result)

    @admin.display(description="last error")
    def last_error_json(self, task: Task) -> str:
        return self._json_field(task.last_error)

    @admin.display(description="attempts")
    def attempts_table(self, task: Task) -> SafeString:
        # The lease in progress has no outcome yet; one past its expiry says
        # so (the sweeper has not reclaimed it yet).
        current = "lease expired" if getattr(task, "category", "") == "expired" else "in progress"
        attempts = [
            {
                "attempt": record.attempt,
                "captured_at": timestamp(record.captured_at),
                "ended_at": timestamp(record.ended_at),
                "outcome": current
                if record.outcome is None
                else Outcome(record.outcome).label.lower(),
                "outcome_key": record.outcome or "in_progress",
                "error": None if record.error is None else _json_text(record.error),
                "result": None if record.result is None else _json_text(record.result),
                "leased_by": record.leased_by,
            }
            for record in services.task_attempts(task=task)
        ]
        return render_to_string("admin/tasks_app/task/attempts.html", {"attempts": attempts})

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        # Expiry and turns are judged on the database clock, like every lease
        # decision.
        return super().get_queryset(request).annotate(category=TASK_CATEGORY)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Task], search_term: str
    ) -> tuple[QuerySet[Task], bool]:
        # A case-sensitive prefix match is served by the id's pattern index
        # (varchar_pattern_ops); the admin's default `icontains` scans.
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(id__startswith=term), False

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        found = super().get_actions(request)
        # The built-in bulk delete loads every object to collect relations.
        found.pop("delete_selected", None)
        return found

    def get_fields(self, request: HttpRequest, obj: Task | None = None) -> Any:
        # Named, not derived from the model, so a new column is not shown
        # until someone decides it should be.
        return self.readonly_fields if obj is not None else super().get_fields(request, obj)

    def get_fieldsets(self, request: HttpRequest, obj: Task | None = None) -> Any:
        if obj is None:
            return super().get_fieldsets(request, obj)
        return self.fieldsets_of_a_task

    def get_readonly_fields(self, request: HttpRequest, obj: Task | None = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def has_change_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        # No field of a task is edited in a form (a status change must go
        # through the lease rules): its page has no Save buttons and a POST
        # to it is refused. The list's change permission stays, for the
        # actions.
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = TaskAddForm
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request: HttpRequest, obj: Task, form: Any, change: bool) -> None:
        if change:
            # Unreachable while change pages are read-only.
            raise PermissionDenied
        row = services.register_task(
            task=NewTask(
                id=obj.id,
                namespace_id=obj.namespace_id,
                timeout=obj.timeout,
                retries_left=obj.retries_left,
            )
        )
        obj.refresh_from_db()
        assert obj.pk == row.id

    def delete_model(self, request: HttpRequest, obj: Task) -> None:
        services.delete_task(task_id=obj.pk)

    def run_operator_action(
        self, request: HttpRequest, queryset: QuerySet[Task], action: OperatorAction, label: str
    ) -> HttpResponse | None:
        select_across = request.POST.get("select_across") == "1"
        reset: int | None = None
        if action == OperatorAction.REQUEUE or select_across:
            form = RequeueForm(request.POST if "confirm" in request.POST else None)
            if "confirm" not in request.POST or not form.is_valid():
                return self._confirmation(request, queryset, action, label, form, select_across)
            if action == OperatorAction.REQUEUE:
                reset = form.cleaned_data["reset_retries_to"]
        if select_across:
            result = services.apply_operator_action_to_queryset(
                action=action, queryset=queryset, reset_retries_to=reset
            )
            query = request.GET.urlencode()
            scope = f"every task matching the filter {query}" if query else "every task"
        else:
            ids = list(queryset.values_list("pk", flat=True)[: services.OPERATOR_BATCH])
            result = services.apply_operator_action(
                action=action, task_ids=ids, reset_retries_to=reset
            )
            scope = f"{len(ids)} selected tasks"
        _log(request, label, result, scope)
        _report(request, label, result)
        return None

    def _confirmation(
        self,
        request: HttpRequest,
        queryset: QuerySet[Task],
        action: OperatorAction,
        label: str,
        form: RequeueForm,
        select_across: bool,
    ) -> TemplateResponse:
        count, estimated = count_or_estimate(queryset)
        scheduled: tuple[int, bool] | None = None
        if action == OperatorAction.REQUEUE:
            scheduled = count_or_estimate(queryset.filter(CATEGORY["scheduled"].q))
        context = {
            **self.admin_site.each_context(request),
            "title": f"{label} {'about ' if estimated else ''}{count} tasks?",
            "opts": self.model._meta,
            "action": action.value,
            "label": label,
            "count": count,
            "estimated": estimated,
            "select_across": select_across,
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "form": form if action == OperatorAction.REQUEUE else None,
            "requeue": action == OperatorAction.REQUEUE,
            "scheduled_count": scheduled[0] if scheduled else 0,
            "scheduled_estimated": scheduled[1] if scheduled else False,
            "filters": request.get_full_path(),
        }
        return TemplateResponse(request, "admin/tasks_app/task/action_confirmation.html", context)


# --- A namespace's page ------------------------------------------------------------

# The states by the names the API's purge takes, as operators read them.
PURGE_CHOICES = [(PUBLIC_STATE[category.name], category.label) for category in CATEGORIES]
CATEGORY_OF_STATE = {PUBLIC_STATE[category.name]: category for category in CATEGORIES}
# The API's bound on `older_than` (ten years; tasks_app.serializers, which
# the admin does not import: DRF stays at the API's edge).
MAX_PURGE_AGE_HOURS = 10 * 365 * 24


class PurgeForm(forms.Form):
    states = forms.MultipleChoiceField(
        choices=PURGE_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        label="Delete the tasks that are",
    )
    older_than_hours = forms.FloatField(
        required=False,
        min_value=0,
        max_value=MAX_PURGE_AGE_HOURS,
        label="and last changed more than (hours ago)",
        help_text="Empty: whenever they last changed.",
    )

    def older_than(self) -> float | None:
        """In seconds, as the purge service takes it."""
        hours = self.cleaned_data["older_than_hours"]
        return None if hours is None else hours * 3600

    def describe(self) -> str:
        states = ", ".join(self.cleaned_data["states"])
        hours = self.cleaned_data["older_than_hours"]
        return f"states {states}" + (
            "" if hours is None else f", last changed over {hours:g} h ago"
        )


def _counted(count: int, estimated: bool) -> str:
    return f"about {count}" if estimated else str(count)


@admin.register(Namespace)
class NamespacePageAdmin(NamespaceAdmin):
    """A namespace's page: above its settings (NamespaceAdmin), its tasks'
    counts, the leases ended over the last hour, and the controls over its
    captures: pause, resume, purge. These are tasks_app's, so the page is
    registered here (namespaces_app never imports tasks_app).

    Each control asks first (a page that says what it will do) and then
    calls the service that the API's endpoint calls; what it did goes to
    the admin log against the namespace.
    """

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/pause/", wrap(self.pause_view), name=f"{name}_pause"),
            path("<path:object_id>/resume/", wrap(self.resume_view), name=f"{name}_resume"),
            path("<path:object_id>/purge/", wrap(self.purge_view), name=f"{name}_purge"),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = dict(extra_context or {})
        if request.user.has_perm("tasks_app.view_task"):
            context["namespace_page"] = self._page(request, unquote(object_id))
        return super().change_view(request, object_id, form_url, context)

    def _page(self, request: HttpRequest, namespace_id: str) -> dict[str, Any] | None:
        figures = namespace_figures(namespace_id)
        if figures is None:
            return None
        namespace = figures.namespace
        ended = namespace_ended(namespace_id)
        counts = [
            {
                "category": category.name,
                "label": category.label,
                "count": figures.counts[category.name],
                "url": task_list_url(namespace__id__exact=namespace_id, state=category.name),
            }
            for category in CATEGORIES
        ]
        may_change = self.has_change_permission(request, namespace)
        return {
            "paused_at": timestamp(namespace.paused_at) if namespace.paused_at else None,
            "counts": counts,
            "total": sum(count.value for count in figures.counts.values()),
            "total_estimated": any(count.estimated for count in figures.counts.values()),
            "lag": age(figures.oldest_idle_seconds),
            "in_flight": figures.in_flight,
            "max_in_flight": namespace.max_in_flight,
            "ended": {
                "done": sum(ended.done),
                "failed": sum(ended.failed),
                "expired": sum(ended.expired),
            },
            "chart": throughput_chart(
                ended.done, ended.failed, expired=ended.expired, start=ended.start
            ),
            "tasks_url": task_list_url(namespace__id__exact=namespace_id),
            "pause_url": self._url("pause", namespace_id)
            if may_change and namespace.paused_at is None
            else None,
            "resume_url": self._url("resume", namespace_id)
            if may_change and namespace.paused_at is not None
            else None,
            "purge_url": self._url("purge", namespace_id)
            if request.user.has_perm("tasks_app.delete_task")
            else None,
        }

    def _url(self, control: str, namespace_id: str) -> str:
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}_{control}"
        return reverse(name, args=[quote(namespace_id)])

    def _gone(self, request: HttpRequest, object_id: str) -> HttpResponse:
        # Django's own answer to a change page of a missing object.
        return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)  # type: ignore[attr-defined, no-any-return]

    def pause_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._pause_or_resume(request, object_id, pause=True)

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._pause_or_resume(request, object_id, pause=False)

    def _pause_or_resume(
        self, request: HttpRequest, object_id: str, *, pause: bool
    ) -> HttpResponse:
        namespace = self.get_object(request, unquote(object_id))
        if namespace is None:
            return self._gone(request, object_id)
        if not self.has_change_permission(request, namespace):
            raise PermissionDenied
        if request.method != "POST":
            title = "Pause captures?" if pause else "Resume captures?"
            return self._confirm(
                request, namespace, "admin/namespaces_app/namespace/pause.html", title, pause=pause
            )
        was_paused_at = namespace.paused_at
        try:
            if pause:
                namespace = services.pause_namespace(namespace_id=namespace.pk)
            else:
                namespace = services.resume_namespace(namespace_id=namespace.pk)
        except NamespaceNotFound:
            return self._gone(request, object_id)
        if pause and was_paused_at is not None:
            # Someone else paused it first: nothing changed, nothing to log.
            self.message_user(
                request,
                f"{namespace.pk} was already paused, since {timestamp(was_paused_at)}.",
                messages.WARNING,
            )
        elif not pause and was_paused_at is None:
            self.message_user(request, f"{namespace.pk} was not paused.", messages.WARNING)
        elif pause:
            self.log_change(request, namespace, "Paused: captures lease nothing until resumed.")
            self.message_user(
                request,
                f"Paused {namespace.pk}: captures lease nothing until it is resumed.",
                messages.SUCCESS,
            )
        else:
            self.log_change(
                request,
                namespace,
                f"Resumed: captures lease again (paused since {timestamp(was_paused_at)}).",
            )
            self.message_user(
                request, f"Resumed {namespace.pk}: captures lease again.", messages.SUCCESS
            )
        return HttpResponseRedirect(namespace_url(namespace.pk))

    def purge_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        namespace = self.get_object(request, unquote(object_id))
        if namespace is None:
            return self._gone(request, object_id)
        if not request.user.has_perm("tasks_app.delete_task"):
            raise PermissionDenied
        form = PurgeForm(request.POST if request.method == "POST" else None)
        template = "admin/namespaces_app/namespace/purge.html"
        if not form.is_valid():
            return self._confirm(request, namespace, template, "Purge tasks", form=form)
        if "confirm" not in request.POST:
            # The form filled in: say how many tasks it takes, then ask.
            matching = self._matching(namespace.pk, form)
            return self._confirm(
                request, namespace, template, "Purge these tasks?", form=form, matching=matching
            )
        try:
            deleted = services.purge_namespace(
                namespace_id=namespace.pk,
                states=form.cleaned_data["states"],
                older_than=form.older_than(),
            )
        except NamespaceNotFound:
            return self._gone(request, object_id)
        total = sum(deleted.values())
        detail = ", ".join(
            f"{count} {CATEGORY_OF_STATE[state].label.lower()}"
            for state, count in deleted.items()
            if count
        )
        summary = f"Purged {_tasks(total)}" + (f": {detail}" if detail else "")
        self.log_change(request, namespace, f"{summary} ({form.describe()}).")
        self.message_user(
            request,
            f"{summary}.",
            messages.SUCCESS if total else messages.WARNING,
        )
        return HttpResponseRedirect(namespace_url(namespace.pk))

    def _matching(self, namespace_id: str, form: PurgeForm) -> list[dict[str, Any]]:
        """How many tasks of each state chosen the purge would delete now."""
        preview = services.purge_preview(
            namespace_id=namespace_id,
            states=form.cleaned_data["states"],
            older_than=form.older_than(),
        )
        return [
            {"label": CATEGORY_OF_STATE[state].label, "count": _counted(count, estimated)}
            for state, (count, estimated) in preview.items()
        ]

    def _confirm(
        self,
        request: HttpRequest,
        namespace: Namespace,
        template: str,
        title: str,
        **context: Any,
    ) -> TemplateResponse:
        return TemplateResponse(
            request,
            template,
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "original": namespace,
                "title": title,
                "subtitle": namespace.pk,
                "namespace_url": namespace_url(namespace.pk),
                **context,
            },
        )
