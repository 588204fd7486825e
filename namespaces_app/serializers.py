from taskq_project.api import IdField, StrictSerializer


class NamespaceCreateSerializer(StrictSerializer):
    id = IdField()
