from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import MethodNotAllowed
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys_app.models import Role
from apikeys_app.permissions import token_scope
from namespaces_app.views import render_namespace
from taskq_project import schema
from taskq_project.views import validated_path_id
from tasks_app import services
from tasks_app.dashboard import PUBLIC_STATE, NamespaceFigures, namespace_figures
from tasks_app.filters import TaskFilter
from tasks_app.models import Task
from tasks_app.pagination import TaskCursorPagination
from tasks_app.rendering import render_attempt, render_detail, render_lease, render_task
from tasks_app.serializers import (
    CaptureSerializer,
    ExtendSerializer,
    PurgeSerializer,
    ReleaseSerializer,
    TaskBatchSerializer,
    TaskCreateSerializer,
)

# Leases must never be served from, or stored in, an HTTP cache.
NO_STORE = {"Cache-Control": "no-store"}
LIST_COLUMNS = (
    "id",
    "namespace_id",
    "timeout",
    "retries_left",
    "updated_at",
    "status",
    "lease_expires_at",
    "attempt",
    "priority",
    "available_at",
)


TASK_REGISTERED = PolymorphicProxySerializer(
    component_name="TaskRegistered",
    serializers=[schema.TaskSerializer, schema.RegisteredListSerializer],
    resource_type_field_name=None,
)


@extend_schema_view(
    list=extend_schema(
        summary="List registered tasks",
        parameters=schema.LIST_PARAMETERS,
        responses={200: schema.TaskListSerializer, **schema.errors()},
    ),
    create=extend_schema(
        summary="Register a task, or a list of up to 1,000 tasks",
        request=schema.TASK_REGISTRATION,
        examples=schema.REGISTRATION_EXAMPLES,
        responses={201: TASK_REGISTERED, **schema.errors(409, 413, 415)},
    ),
    retrieve=extend_schema(
        summary="Read a registered task, with its payload and latest outcome",
        parameters=[schema.id_path("The task id.")],
        responses={
            200: schema.TaskDetailSerializer,
            204: OpenApiResponse(description="No such task (empty body)."),
            **schema.errors(),
        },
    ),
    destroy=extend_schema(
        summary="Delete a task",
        parameters=[schema.id_path("The task id.")],
        responses={204: OpenApiResponse(description="Deleted."), **schema.errors(404)},
    ),
    capture=extend_schema(
        summary="Capture (lease) tasks of a namespace",
        description="GET as in the seed; POST takes the same parameters (query string or "
        "JSON body) and is safe behind caches.",
        parameters=[schema.NAMESPACE_ID_QUERY, schema.LIMIT_QUERY, schema.WAIT_QUERY],
        request=None,
        responses={200: schema.CapturedSerializer, **schema.errors(404, 413, 415)},
    ),
    release=extend_schema(
        summary="Release leased tasks",
        request=ReleaseSerializer,
        description="Give `task_ids` (the seed's form: ends whichever lease each task is "
        "under) or `leases` (fenced: ends only the lease each token names).",
        examples=schema.RELEASE_EXAMPLES,
        responses={200: schema.ReleasedSerializer, **schema.errors(413, 415)},
    ),
    extend=extend_schema(
        summary="Extend leases (heartbeat)",
        description="Each valid lease ends `timeout` seconds from now (default: the task's "
        "own timeout); status, retries, attempt and token stay.",
        request=ExtendSerializer,
        responses={200: schema.ExtendedSerializer, **schema.errors(413, 415)},
    ),
)
class TaskViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """`/v1/task`: register, list, read and delete tasks; capture and release leases."""

    # Any character, newlines included: the id is validated, not routed.
    lookup_value_regex = r"[\s\S]+?"
    filterset_class = TaskFilter
    pagination_class = TaskCursorPagination
    required_roles = {
        "list": Role.READ_ONLY,
        "retrieve": Role.READ_ONLY,
        "attempts": Role.READ_ONLY,
        "capture": Role.WORKER,
        "release": Role.WORKER,
        "extend": Role.WORKER,
    }

    def get_queryset(self) -> QuerySet[Task]:
        columns = [*LIST_COLUMNS, *(["payload"] if self._with_payload() else [])]
        return services.visible_tasks(token_scope(self.request)).only(*columns)

    def _with_payload(self) -> bool:
        # Lists leave payloads out unless asked (`?fields=payload`): a page
        # of a thousand tasks stays small and cheap to read.
        return "payload" in self.request.query_params.get("fields", "").split(",")

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        if self._with_payload():
            rendered = [render_detail(task, outcome=False) for task in page or []]
        else:
            rendered = [render_task(task) for task in page or []]
        return self.get_paginated_response(rendered)

    def create(self, request: Request) -> Response:
        if isinstance(request.data, list):
            # Additive to the seed: a list registers up to 1,000 tasks at once.
            batch = TaskBatchSerializer(data=request.data)
            batch.is_valid(raise_exception=True)
            rows = services.register_tasks(tasks=batch.to_new_tasks(), scope=token_scope(request))
            return Response(
                {"list": [render_task(row) for row in rows]}, status=status.HTTP_201_CREATED
            )
        serializer = TaskCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        row = services.register_task(task=serializer.to_new_task(), scope=token_scope(request))
        return Response(render_task(row), status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        task = services.get_task(task_id=validated_path_id(pk, request), scope=token_scope(request))
        if task is None:
            # The seed's contract: an unknown id is "204 No Content".
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(render_detail(task))

    @extend_schema(
        summary="A task's attempts, newest first",
        parameters=[schema.id_path("The task id.")],
        responses={
            200: schema.AttemptListSerializer,
            204: OpenApiResponse(description="No such task (empty body)."),
            **schema.errors(),
        },
    )
    def attempts(self, request: Request, pk: str) -> Response:
        task = services.get_task(task_id=validated_path_id(pk, request), scope=token_scope(request))
        if task is None:
            # As for the task itself: an unknown id is "204 No Content".
            return Response(status=status.HTTP_204_NO_CONTENT)
        attempts = services.task_attempts(task=task)
        return Response({"list": [render_attempt(a) for a in attempts]})

    def destroy(self, request: Request, pk: str) -> Response:
        services.delete_task(task_id=validated_path_id(pk, request), scope=token_scope(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=False, methods=["get", "post"])
    def capture(self, request: Request) -> Response:
        # GET is the seed's form; POST is offered because a state-changing GET
        # is unsafe behind caches and link prefetchers. POST may carry the
        # parameters in a JSON body or in the query string.
        if request.method == "HEAD":
            # DRF answers HEAD with the GET handler; a HEAD from a link checker
            # or monitor must never lease tasks.
            raise MethodNotAllowed("HEAD")
        data = request.query_params if request.method == "GET" or not request.data else request.data
        serializer = CaptureSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        rows = services.capture_tasks(
            **serializer.capture_arguments(),
            scope=token_scope(request),
            holder=getattr(request.auth, "name", None),
        )
        return Response(
            {"list": [render_lease(row, payload=True) for row in rows]}, headers=NO_STORE
        )

    @action(detail=False, methods=["put"])
    def release(self, request: Request) -> Response:
        serializer = ReleaseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = services.release_tasks(
            **serializer.release_arguments(), scope=token_scope(request)
        )
        return Response(
            {
                "list": [render_task(row) for row in result.released],
                "errors": [_render_error(e) for e in result.errors],
            },
            headers=NO_STORE,
        )

    @action(detail=False, methods=["put"])
    def extend(self, request: Request) -> Response:
        serializer = ExtendSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = services.extend_leases(**serializer.extend_arguments(), scope=token_scope(request))
        return Response(
            {
                "list": [render_lease(row) for row in result.extended],
                "errors": [_render_error(e) for e in result.errors],
            },
            headers=NO_STORE,
        )


def _render_error(error: services.ReleaseError) -> dict[str, str]:
    return {"id": error.id, "code": str(error.code), "detail": error.detail}


def render_figures(figures: NamespaceFigures) -> dict[str, Any]:
    counts = figures.counts
    return {
        "id": figures.namespace.id,
        "paused": figures.namespace.paused_at is not None,
        "max_in_flight": figures.namespace.max_in_flight,
        "counts": {PUBLIC_STATE[state]: count.value for state, count in counts.items()},
        "estimated": [PUBLIC_STATE[state] for state, count in counts.items() if count.estimated],
        "oldest_idle_age_seconds": figures.oldest_idle_seconds,
        "in_flight": figures.in_flight,
        "throughput": {
            "last_5_minutes": figures.throughput_5_minutes,
            "last_60_minutes": figures.throughput_60_minutes,
        },
    }


class NamespaceControlViewSet(viewsets.ViewSet):
    """`/v1/namespace/{id}/pause`, `/resume` and `/stats`: operators watch and steer."""

    required_roles = {"stats": Role.READ_ONLY}

    @extend_schema(
        summary="A namespace at a glance",
        description="Tasks per state, queue lag, valid leases and throughput. Counts above "
        "100,000 rows are the planner's estimates, listed in `estimated`.",
        parameters=[schema.id_path("The namespace id.")],
        responses={
            200: schema.NamespaceStatsSerializer,
            204: OpenApiResponse(description="No such namespace (empty body)."),
            **schema.errors(),
        },
    )
    def stats(self, request: Request, pk: str) -> Response:
        namespace_id = validated_path_id(pk, request)
        scope = token_scope(request)
        figures = (
            namespace_figures(namespace_id) if scope is None or namespace_id in scope else None
        )
        if figures is None:
            # As for the namespace itself: an unknown id is "204 No Content".
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(render_figures(figures))

    @extend_schema(
        summary="Pause a namespace's captures",
        description="Captures lease nothing until it is resumed (waiting ones keep waiting); "
        "registrations go on, and leases already taken run to their end. Operator role.",
        request=None,
        parameters=[schema.id_path("The namespace id.")],
        responses={200: schema.NamespaceSerializer, **schema.errors(404)},
    )
    def pause(self, request: Request, pk: str) -> Response:
        namespace = services.pause_namespace(
            namespace_id=validated_path_id(pk, request), scope=token_scope(request)
        )
        return Response(render_namespace(namespace))

    @extend_schema(
        summary="Resume a paused namespace",
        description="Captures lease again; waiting captures are woken. Operator role.",
        request=None,
        parameters=[schema.id_path("The namespace id.")],
        responses={200: schema.NamespaceSerializer, **schema.errors(404)},
    )
    def resume(self, request: Request, pk: str) -> Response:
        namespace = services.resume_namespace(
            namespace_id=validated_path_id(pk, request), scope=token_scope(request)
        )
        return Response(render_namespace(namespace))

    @extend_schema(
        summary="Delete a namespace's tasks by state",
        description="Deletes the namespace's tasks in the states named (for example "
        '`{"states": ["done", "failed_final"]}`), last changed more than `older_than` '
        "seconds ago when given, in batches of short transactions: captures and releases "
        "go on meanwhile, and a task being changed at that instant is left. Answers how "
        "many were deleted, in all and per state. Operator role.",
        request=PurgeSerializer,
        parameters=[schema.id_path("The namespace id.")],
        responses={200: schema.PurgedSerializer, **schema.errors(404)},
    )
    def purge(self, request: Request, pk: str) -> Response:
        namespace_id = validated_path_id(pk, request)
        serializer = PurgeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        deleted = services.purge_namespace(
            namespace_id=namespace_id, **serializer.purge_arguments(), scope=token_scope(request)
        )
        return Response(
            {"id": namespace_id, "deleted": sum(deleted.values()), "by_state": deleted},
            headers=NO_STORE,
        )
