from rest_framework import status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from apikeys_app.models import Role
from apikeys_app.permissions import token_scope
from namespaces_app import services
from namespaces_app.models import Namespace
from namespaces_app.serializers import NamespaceCreateSerializer
from taskq_project.views import validated_path_id


def render_namespace(namespace: Namespace) -> dict[str, str]:
    return {"id": namespace.id}


class NamespaceViewSet(viewsets.ViewSet):
    """`/v1/namespace`: list, register, read and deregister namespaces."""

    lookup_value_regex = ".+?"
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
            namespace_id=validated_path_id(pk), scope=token_scope(request)
        )
        if namespace is None:
            # The seed's contract: an unknown id is "204 No Content".
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(render_namespace(namespace))

    def destroy(self, request: Request, pk: str) -> Response:
        namespace_id = validated_path_id(pk)
        services.delete_namespace(namespace_id=namespace_id, scope=token_scope(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
