from typing import Any

import django_filters
from django import forms
from django.core.exceptions import ValidationError

from taskq_project.ids import MAX_ID_LENGTH, id_problem
from tasks_app.models import Task, TaskStatus


def validate_id(value: str) -> None:
    problem = id_problem(value)
    if problem is not None:
        raise ValidationError(f"Id {problem}.")


class IdFormField(forms.CharField):
    # Only an absent parameter means "no filter"; `namespace_id=` is an
    # empty id, and refused like any other impossible one.
    empty_values = [None]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strip=False, empty_value=None, **kwargs)


class IdFilter(django_filters.CharFilter):
    field_class = IdFormField


class TaskFilter(django_filters.FilterSet):
    namespace_id = IdFilter(
        field_name="namespace_id", max_length=MAX_ID_LENGTH, validators=[validate_id]
    )
    status = django_filters.MultipleChoiceFilter(choices=TaskStatus.choices)

    class Meta:
        model = Task
        fields = ["namespace_id", "status"]
