"""Namespaces in the admin: register, deregister (with their tasks), counts."""

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from namespaces_app import services
from namespaces_app.models import Namespace
from taskq_project.counting import count_or_estimate
from taskq_project.ids import id_problem


class NamespaceForm(forms.ModelForm):
    class Meta:
        model = Namespace
        fields = ["id"]

    def clean_id(self) -> str:
        value = self.cleaned_data["id"]
        problem = id_problem(value)
        if problem:
            raise forms.ValidationError(f"Id {problem}.")
        return value


@admin.register(Namespace)
class NamespaceAdmin(admin.ModelAdmin):
    form = NamespaceForm
    list_display = ["id", "created_at", "task_count", "tasks_link"]
    search_fields = ["id"]
    readonly_fields = ["created_at"]

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
        return ["id", "created_at"] if obj is not None else ["created_at"]

    def save_model(self, request: HttpRequest, obj: Namespace, form: Any, change: bool) -> None:
        if not change:
            registered = services.register_namespace(namespace_id=obj.id)
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
