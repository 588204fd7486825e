from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from rest_framework.routers import SimpleRouter

from namespaces_app.models import RESERVED_NAMESPACE_ID_SUFFIXES
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

# The namespace's controls (tasks_app.views.NamespaceControlViewSet), each
# under /v1/namespace/{id}/<action>, by the method it answers.
NAMESPACE_CONTROLS = {"pause": "post", "resume": "post", "purge": "post", "stats": "get"}
assert {f"/{action}" for action in NAMESPACE_CONTROLS} == set(RESERVED_NAMESPACE_ID_SUFFIXES)

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
    # Likewise for namespaces: their ids may not end with these endpoints
    # (RESERVED_NAMESPACE_ID_SUFFIXES).
    *(
        re_path(
            rf"^v1/namespace/(?P<pk>[\s\S]+?)/{action}/?$",
            NamespaceControlViewSet.as_view({method: action}),
            name=f"namespace-{action}",
        )
        for action, method in NAMESPACE_CONTROLS.items()
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
