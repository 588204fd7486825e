"""The operators' admin: Django's admin with the taskq dashboard as its index."""

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from tasks_app.charts import sparkline, throughput_chart
from tasks_app.dashboard import CATEGORIES, CATEGORY_LABELS, build_dashboard

DASHBOARD_REFRESH_SECONDS = 5

# Models kept out of the index. An operator works with tasks, namespaces,
# tokens and logins; groups (permissions are given per user here) and
# django-axes' login records are not part of that work. They stay
# registered, so their pages (and their apps' pages) still answer whoever
# has the permission, and the index links them in a line of their own for
# superusers: unlocking a login locked out by axes is done there.
HIDDEN_MODELS = {("auth", "group")}
HIDDEN_APPS = {"axes"}

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


def timestamp(value: datetime | None) -> SafeString | str:
    """A time as the admin shows it in lists and pages alike, e.g.
    "2026-12-01 20:31:07 UTC" in the current time zone (settings.TIME_ZONE);
    "—" for none.

    The zone is joined to the time by a no-break space, so a narrow column
    wraps between the date and the time and nowhere else.
    """
    if value is None:
        return "—"
    local = timezone.localtime(value)
    return format_html(
        '<time datetime="{}">{}\u00a0{}</time>',
        local.isoformat(timespec="seconds"),
        local.strftime(TIMESTAMP_FORMAT),
        local.tzname() or "",
    )


def age(seconds: float | None) -> str:
    """A duration as the dashboard and the namespace page show it."""
    if seconds is None:
        return "—"
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


class TaskqAdminSite(admin.AdminSite):
    site_header = "taskq operations"
    site_title = "taskq"
    index_title = "Dashboard"
    index_template = "admin/taskq/index.html"
    # The sidebar repeats the index's list of models on every page, and on
    # the task list it squeezed the table between itself and the filters:
    # the breadcrumbs lead back to the index instead.
    enable_nav_sidebar = False
    # The dash every taskq page uses for "none" (Django's default is "-").
    empty_value_display = "—"

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [
            path(
                "dashboard/",
                self.admin_view(self.dashboard_fragment),
                name="taskq_dashboard_fragment",
            ),
            *super().get_urls(),
        ]

    def get_app_list(
        self, request: HttpRequest, app_label: str | None = None
    ) -> list[dict[str, Any]]:
        apps = super().get_app_list(request, app_label)
        if app_label is not None:
            # An app's own page lists all its models.
            return apps
        shown = []
        for app in apps:
            if app["app_label"] in HIDDEN_APPS:
                continue
            app["models"] = [m for m in app["models"] if not self._hidden(app, m)]
            if app["models"]:
                shown.append(app)
        return shown

    @staticmethod
    def _hidden(app: dict[str, Any], model: dict[str, Any]) -> bool:
        return (app["app_label"], model["object_name"].lower()) in HIDDEN_MODELS

    def hidden_links(self, request: HttpRequest) -> list[dict[str, str]]:
        """The hidden models a superuser may open, for the index's last line."""
        if not request.user.is_superuser:
            return []
        links = []
        for app in super().get_app_list(request):
            for model in app["models"]:
                if (app["app_label"] in HIDDEN_APPS or self._hidden(app, model)) and model.get(
                    "admin_url"
                ):
                    links.append({"name": model["name"], "url": model["admin_url"]})
        return links

    def dashboard_context(self, request: HttpRequest) -> dict[str, Any]:
        if not request.user.has_perm("tasks_app.view_task"):
            return {"dashboard": None}
        dashboard = build_dashboard()
        changelist = reverse(f"{self.name}:tasks_app_task_changelist")
        may_view_namespaces = request.user.has_perm("namespaces_app.view_namespace")
        rows = []
        for stats in dashboard.namespaces:
            namespace_query = urlencode({"namespace__id__exact": stats.namespace_id})
            cells = []
            for category in CATEGORIES:
                count = stats.counts[category]
                query = urlencode({"namespace__id__exact": stats.namespace_id, "state": category})
                cells.append({"category": category, "count": count, "url": f"{changelist}?{query}"})
            tasks_url = f"{changelist}?{namespace_query}"
            rows.append(
                {
                    "namespace_id": stats.namespace_id,
                    "url": reverse(
                        f"{self.name}:namespaces_app_namespace_change",
                        args=[quote(stats.namespace_id)],
                    )
                    if may_view_namespaces
                    else tasks_url,
                    "health": stats.health,
                    "cells": cells,
                    "lag": age(stats.oldest_idle_seconds),
                    "sparkline": sparkline(
                        stats.done_per_minute, stats.failed_per_minute, stats.expired_per_minute
                    ),
                    "done_last_hour": sum(stats.done_per_minute),
                    "failed_last_hour": sum(stats.failed_per_minute),
                    "expired_last_hour": sum(stats.expired_per_minute),
                    "tasks_url": tasks_url,
                }
            )
        return {
            "dashboard": dashboard,
            "dashboard_rows": rows,
            "dashboard_labels": [CATEGORY_LABELS[c] for c in CATEGORIES],
            "dashboard_chart": throughput_chart(
                dashboard.done_per_minute,
                dashboard.failed_per_minute,
                expired=dashboard.expired_per_minute,
                start=dashboard.chart_start,
            ),
            "dashboard_done_last_hour": sum(dashboard.done_per_minute),
            "dashboard_failed_last_hour": sum(dashboard.failed_per_minute),
            "dashboard_expired_last_hour": sum(dashboard.expired_per_minute),
            "dashboard_refresh_seconds": DASHBOARD_REFRESH_SECONDS,
        }

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        context = {
            **self.dashboard_context(request),
            "hidden_links": self.hidden_links(request),
            **(extra_context or {}),
        }
        return super().index(request, context)

    def dashboard_fragment(self, request: HttpRequest) -> HttpResponse:
        """The dashboard alone, which the index page re-fetches to stay live."""
        response = TemplateResponse(
            request, "admin/taskq/dashboard.html", self.dashboard_context(request)
        )
        response["Cache-Control"] = "no-store"
        return response
