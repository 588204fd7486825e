from django.db import models

from taskq_project.ids import MAX_ID_LENGTH


class Namespace(models.Model):
    """A named group of tasks that workers capture from."""

    id = models.CharField(primary_key=True, max_length=MAX_ID_LENGTH)
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.id
