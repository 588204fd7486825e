"""The operators' admin: Django's admin with the taskq dashboard as its index."""

from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse

from tasks_app.charts import sparkline, throughput_chart
from tasks_app.dashboard import CATEGORIES, CATEGORY_LABELS, build_dashboard

DASHBOARD_REFRESH_SECONDS = 5


def _age(seconds: float | None) -> str:
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

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [
            path(
                "dashboard/",
                self.admin_view(self.dashboard_fragment),
                name="taskq_dashboard_fragment",
            ),
            *super().get_urls(),
        ]

    def dashboard_context(self, request: HttpRequest) -> dict[str, Any]:
        if not request.user.has_perm("tasks_app.view_task"):
            return {"dashboard": None}
        dashboard = build_dashboard()
        changelist = reverse(f"{self.name}:tasks_app_task_changelist")
        rows = []
        for stats in dashboard.namespaces:
            namespace_query = urlencode({"namespace__id__exact": stats.namespace_id})
            cells = []
            for category in CATEGORIES:
                count = stats.counts[category]
                query = urlencode({"namespace__id__exact": stats.namespace_id, "state": category})
                cells.append({"category": category, "count": count, "url": f"{changelist}?{query}"})
            rows.append(
                {
                    "namespace_id": stats.namespace_id,
                    "health": stats.health,
                    "cells": cells,
                    "lag": _age(stats.oldest_idle_seconds),
                    "sparkline": sparkline(stats.done_per_minute, stats.failed_per_minute),
                    "done_last_hour": sum(stats.done_per_minute),
                    "failed_last_hour": sum(stats.failed_per_minute),
                    "tasks_url": f"{changelist}?{namespace_query}",
                }
            )
        return {
            "dashboard": dashboard,
            "dashboard_rows": rows,
            "dashboard_labels": [CATEGORY_LABELS[c] for c in CATEGORIES],
            "dashboard_chart": throughput_chart(
                dashboard.done_per_minute, dashboard.failed_per_minute
            ),
            "dashboard_done_last_hour": sum(dashboard.done_per_minute),
            "dashboard_failed_last_hour": sum(dashboard.failed_per_minute),
            "dashboard_refresh_seconds": DASHBOARD_REFRESH_SECONDS,
        }

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        context = {**self.dashboard_context(request), **(extra_context or {})}
        return super().index(request, context)

    def dashboard_fragment(self, request: HttpRequest) -> HttpResponse:
        """The dashboard alone, which the index page re-fetches to stay live."""
        response = TemplateResponse(
            request, "admin/taskq/dashboard.html", self.dashboard_context(request)
        )
        response["Cache-Control"] = "no-store"
        return response
