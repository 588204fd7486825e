from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys_app.models import Role
from apikeys_app.permissions import token_scope
from namespaces_app import services
from namespaces_app.models import Namespace
from namespaces_app.serializers import NamespaceCreateSerializer
from taskq_project import schema
from taskq_project.views import validated_path_id


def render_namespace(namespace: Namespace) -> dict[str, str]:
    return {"id": namespace.id}


@extend_schema_view(
    list=extend_schema(
        summary="List registered namespaces",
        responses={200: schema.NamespaceListSerializer, **schema.errors()},
    ),
    create=extend_schema(
        summary="Register a new namespace",
        request=NamespaceCreateSerializer,
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
        return Response({"list": [render_namespace(ns) for ns in namespaces]})

    def create(self, request: Request) -> Response:
        serializer = NamespaceCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        namespace = services.register_namespace(
            namespace_id=serializer.validated_data["id"], scope=token_scope(request)
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

    def destroy(self, request: Request, pk: str) -> Response:
        namespace_id = validated_path_id(pk, request)
        services.delete_namespace(namespace_id=namespace_id, scope=token_scope(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
