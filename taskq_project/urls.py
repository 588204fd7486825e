from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from rest_framework.routers import SimpleRouter

from namespaces_app.views import NamespaceViewSet
from taskq_project.docs_views import RedocView, SchemaView, SwaggerView
from taskq_project.views import healthz, index, metrics
from tasks_app.views import NamespaceControlViewSet, TaskViewSet

# `/?`: every endpoint answers with and without a trailing slash, without a
# redirect (a redirected PUT arrives as a GET in many clients).
router = SimpleRouter()
router.trailing_slash = "/?"
router.register("namespace", NamespaceViewSet, basename="namespace")
router.register("task", TaskViewSet, basename="task")

urlpatterns = [
    re_path(r"^v1/schema/?$", SchemaView.as_view(), name="schema"),
    re_path(r"^v1/docs/?$", SwaggerView.as_view(url_name="schema"), name="docs"),
    re_path(r"^v1/redoc/?$", RedocView.as_view(url_name="schema"), name="redoc"),
    # Before the router's, whose task id pattern would take "x/attempts" for
    # an id; ids may not end with "/attempts" (tasks_app.serializers).
    re_path(
        r"^v1/task/(?P<pk>[\s\S]+?)/attempts/?$",
        TaskViewSet.as_view({"get": "attempts"}),
        name="task-attempts",
    ),
    # Likewise for namespaces; their ids may not end with "/pause", "/resume",
    # "/stats" or "/purge".
    re_path(
        r"^v1/namespace/(?P<pk>[\s\S]+?)/pause/?$",
        NamespaceControlViewSet.as_view({"post": "pause"}),
        name="namespace-pause",
    ),
    re_path(
        r"^v1/namespace/(?P<pk>[\s\S]+?)/resume/?$",
        NamespaceControlViewSet.as_view({"post": "resume"}),
        name="namespace-resume",
    ),
    re_path(
        r"^v1/namespace/(?P<pk>[\s\S]+?)/purge/?$",
        NamespaceControlViewSet.as_view({"post": "purge"}),
        name="namespace-purge",
    ),
    re_path(
        r"^v1/namespace/(?P<pk>[\s\S]+?)/stats/?$",
        NamespaceControlViewSet.as_view({"get": "stats"}),
        name="namespace-stats",
    ),
    path("v1/", include(router.urls)),
    re_path(r"^healthz/?$", healthz, name="healthz"),
    re_path(r"^metrics/?$", metrics, name="metrics"),
    path("", index, name="index"),
    path(settings.ADMIN_URL, admin.site.urls),
]

handler400 = "taskq_project.api.json_bad_request"
handler404 = "taskq_project.api.json_not_found"
handler500 = "taskq_project.api.json_server_error"
