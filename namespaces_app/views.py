from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys_app.models import Role
from apikeys_app.permissions import token_scope
from namespaces_app import services
from namespaces_app.models import Namespace
from namespaces_app.serializers import NamespaceCreateSerializer, NamespaceSettingsSerializer
from taskq_project import schema
from taskq_project.views import validated_path_id


def render_namespace(namespace: Namespace) -> dict[str, Any]:
    """A namespace and its settings, `id` first (the seed's shape, extended)."""
    backoff = services.backoff_of(namespace)
    return {
        "id": namespace.id,
        "default_timeout": namespace.default_timeout,
        "default_retries": namespace.default_retries,
        "retry_backoff": (
            {"kind": "none"}
            if backoff is None
            else {
                "kind": "exponential",
                "base": backoff.base,
                "max": backoff.max,
                "jitter": backoff.jitter,
            }
        ),
        "history": namespace.history,
        "max_in_flight": namespace.max_in_flight,
        "paused": namespace.paused_at is not None,
        "paused_at": (
            None if namespace.paused_at is None else int(namespace.paused_at.timestamp())
        ),
    }


@extend_schema_view(
    list=extend_schema(
        summary="List registered namespaces",
        responses={200: schema.NamespaceListSerializer, **schema.errors()},
    ),
    create=extend_schema(
        summary="Register a new namespace",
        request=NamespaceCreateSerializer,
        examples=schema.NAMESPACE_REGISTRATION_EXAMPLES,
        responses={201: schema.NamespaceSerializer, **schema.errors(409, 413, 415)},
    ),
    retrieve=extend_schema(
        summary="Read a registered namespace",
        parameters=[schema.id_path("The namespace id.")],
        responses={
            200: schema.NamespaceSerializer,
            204: OpenApiResponse(description="No such namespace (empty body)."),
            **schema.errors(),
        },
    ),
    partial_update=extend_schema(
        summary="Change a namespace's settings",
        parameters=[schema.id_path("The namespace id.")],
        request=NamespaceSettingsSerializer,
        examples=schema.NAMESPACE_CHANGE_EXAMPLES,
        responses={200: schema.NamespaceSerializer, **schema.errors(404, 413, 415)},
    ),
    destroy=extend_schema(
        summary="Deregister a namespace and all its tasks",
        parameters=[schema.id_path("The namespace id.")],
        responses={204: OpenApiResponse(description="Deleted."), **schema.errors(404)},
    ),
)
class NamespaceViewSet(viewsets.ViewSet):
    """`/v1/namespace`: list, register, read and deregister namespaces."""

    # Any character, newlines included: the id is validated, not routed.
    lookup_value_regex = r"[\s\S]+?"
    required_roles = {"list": Role.READ_ONLY, "retrieve": Role.READ_ONLY}

    def list(self, request: Request) -> Response:
        namespaces = services.list_namespaces(scope=token_scope(request))
        # The seed's shape: ids only (a namespace's settings are on its GET).
        return Response({"list": [{"id": ns.id} for ns in namespaces]})

    def create(self, request: Request) -> Response:
        serializer = NamespaceCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        namespace = services.register_namespace(
            namespace_id=serializer.validated_data["id"],
            scope=token_scope(request),
            settings=serializer.to_settings(),
        )
        return Response(render_namespace(namespace), status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        namespace = services.get_namespace(
            namespace_id=validated_path_id(pk, request), scope=token_scope(request)
        )
        if namespace is None:
            # The seed's contract: an unknown id is "204 No Content".
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(render_namespace(namespace))

    def partial_update(self, request: Request, pk: str) -> Response:
        namespace_id = validated_path_id(pk, request)
        serializer = NamespaceSettingsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        namespace = services.change_namespace(
            namespace_id=namespace_id, settings=serializer.to_settings(), scope=token_scope(request)
        )
        return Response(render_namespace(namespace))

    def destroy(self, request: Request, pk: str) -> Response:
        namespace_id = validated_path_id(pk, request)
        services.delete_namespace(namespace_id=namespace_id, scope=token_scope(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
