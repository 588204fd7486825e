"""Operators' controls over tasks.

A task's page is read-only, with no Save buttons: status changes only
through the actions below, and every action goes through
`tasks_app.services`, which applies the same lease rules as the API.
"""

import json
from collections.abc import Callable
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from namespaces_app.models import Namespace
from taskq_project.counting import EstimatedCountPaginator, count_or_estimate
from taskq_project.ids import id_problem
from tasks_app import services
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


def _log(request: HttpRequest, action: str, result: BulkResult, scope: str) -> None:
    LogEntry.objects.create(
        user_id=cast(int, request.user.pk),
        content_type=ContentType.objects.get_for_model(Task),
        object_id=None,
        object_repr=f"{action} on {scope}"[:200],
        action_flag=CHANGE,
        change_message=f"{action}: {result.summary()}",
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


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "namespace_link",
        "status",
        "priority",
        "retries_left",
        "timeout",
        "attempt",
        "turn",
        "updated_at",
        "lease_expiry",
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
    # A task's page, read-only: its columns, then what it carries and its attempts.
    task_fields = [
        "id",
        "namespace",
        "status",
        "priority",
        "timeout",
        "retries_left",
        "created_at",
        "updated_at",
        "available_at",
        "lease_expires_at",
        # Never the lease token: whoever reads it could end the lease.
        "attempt",
    ]
    work_fields = ["payload_json", "result_json", "last_error_json"]
    readonly_fields = [*task_fields, *work_fields, "attempts_table"]
    fieldsets_of_a_task = [
        (None, {"fields": task_fields}),
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

    @admin.display(description="namespace", ordering="namespace_id")
    def namespace_link(self, task: Task) -> str:
        return task.namespace_id

    @admin.display(description="lease expiry", ordering="lease_expires_at")
    def lease_expiry(self, task: Task) -> str:
        if task.lease_expires_at is None:
            return "—"
        when = task.lease_expires_at.strftime("%Y-%m-%d %H:%M:%S")
        if getattr(task, "lease_is_expired", False):
            return format_html('{} <strong class="taskq-expired">expired</strong>', when)
        return when

    @admin.display(description="available at", ordering="available_at")
    def turn(self, task: Task) -> str:
        if task.available_at is None:
            return "—"
        when = task.available_at.strftime("%Y-%m-%d %H:%M:%S")
        if getattr(task, "is_scheduled", False):
            return format_html('{} <strong class="taskq-scheduled">scheduled</strong>', when)
        return when

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
        attempts = [
            {
                "attempt": record.attempt,
                "captured_at": record.captured_at,
                "ended_at": record.ended_at,
                "outcome": "in progress"
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
        return (
            super()
            .get_queryset(request)
            .annotate(
                lease_is_expired=ExpressionWrapper(
                    CATEGORY["expired"].q,
                    output_field=BooleanField(),
                ),
                is_scheduled=ExpressionWrapper(
                    CATEGORY["scheduled"].q,
                    output_field=BooleanField(),
                ),
            )
        )

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
            scope = "all tasks matching the filter"
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
