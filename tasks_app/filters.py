import django_filters

from tasks_app.models import Task, TaskStatus


class TaskFilter(django_filters.FilterSet):
    namespace_id = django_filters.CharFilter(field_name="namespace_id", max_length=255)
    status = django_filters.MultipleChoiceFilter(choices=TaskStatus.choices)

    class Meta:
        model = Task
        fields = ["namespace_id", "status"]
