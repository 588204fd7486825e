import django.db.models.deletion
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models

# Payloads, results and errors, priorities, the attempt history.
#
# Written for a live table of millions of tasks, outside one transaction:
# - the new columns are NULL or have a constant default: catalog changes;
# - the capture index by priority is built CONCURRENTLY before the old one is
#   dropped, so captures always have an index;
# - the CHECK constraints are added NOT VALID (a brief lock) and validated
#   afterwards, under a lock that lets captures and releases go on.
# A leased task's retry may now be due after its lease's expiry (the
# backoff), so `task_state_consistent` reads `available_at >= lease_expires_at`.

CHECKS = ("task_priority_range", "task_state_consistent")


def add_checks(apps, schema_editor):
    task = apps.get_model("tasks_app", "Task")
    table = schema_editor.quote_name(task._meta.db_table)
    for constraint in task._meta.constraints:
        if constraint.name not in CHECKS:
            continue
        schema_editor.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {constraint.name}")
        schema_editor.execute(f"{constraint.create_sql(task, schema_editor)} NOT VALID")
        schema_editor.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {constraint.name}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("namespaces_app", "0002_namespace_settings"),
        ("tasks_app", "0008_task_state_leased_capturable_not_null"),
    ]

    operations = [
        migrations.AddField(
            model_name="task",
            name="last_error",
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="task",
            name="leased_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="task",
            name="leased_by",
            field=models.TextField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="task",
            name="payload",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="task",
            name="priority",
            field=models.SmallIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="task",
            name="result",
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
        AddIndexConcurrently(
            model_name="task",
            index=models.Index(
                condition=models.Q(("available_at__isnull", False)),
                fields=["namespace", "priority", "available_at"],
                include=("status",),
                name="task_capture_priority_idx",
            ),
        ),
        RemoveIndexConcurrently(model_name="task", name="task_capture_idx"),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveConstraint(model_name="task", name="task_state_consistent"),
                migrations.AddConstraint(
                    model_name="task",
                    constraint=models.CheckConstraint(
                        condition=models.Q(("priority__gte", 0), ("priority__lte", 9)),
                        name="task_priority_range",
                    ),
                ),
                migrations.AddConstraint(
                    model_name="task",
                    constraint=models.CheckConstraint(
                        condition=models.Q(
                            models.Q(
                                ("available_at__isnull", False),
                                ("lease_expires_at__isnull", True),
                                ("status", "idle"),
                            ),
                            models.Q(
                                ("available_at__gte", models.F("lease_expires_at")),
                                ("available_at__isnull", False),
                                ("lease_expires_at__isnull", False),
                                ("retries_left__gt", 0),
                                ("status", "in_progress"),
                            ),
                            models.Q(
                                ("available_at__isnull", True),
                                ("lease_expires_at__isnull", False),
                                ("retries_left", 0),
                                ("status", "in_progress"),
                            ),
                            models.Q(
                                ("available_at__isnull", True),
                                ("lease_expires_at__isnull", True),
                                ("status", "done"),
                            ),
                            models.Q(
                                ("available_at__isnull", False),
                                ("lease_expires_at__isnull", True),
                                ("retries_left__gt", 0),
                                ("status", "failed"),
                            ),
                            models.Q(
                                ("available_at__isnull", True),
                                ("lease_expires_at__isnull", True),
                                ("retries_left", 0),
                                ("status", "failed"),
                            ),
                            _connector="OR",
                        ),
                        name="task_state_consistent",
                    ),
                ),
            ]
        ),
        migrations.RunPython(add_checks, migrations.RunPython.noop),
        migrations.CreateModel(
            name="Attempt",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "task_id",
                        "attempt",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                (
                    "task",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="attempts",
                        to="tasks_app.task",
                    ),
                ),
                ("attempt", models.IntegerField()),
                ("captured_at", models.DateTimeField(null=True)),
                ("ended_at", models.DateTimeField()),
                (
                    "outcome",
                    models.CharField(
                        choices=[
                            ("done", "Done"),
                            ("failed", "Failed"),
                            ("handed_back", "Handed Back"),
                            ("expired", "Expired"),
                            ("cancelled", "Cancelled"),
                        ],
                        max_length=16,
                    ),
                ),
                ("error", models.JSONField(null=True)),
                ("result", models.JSONField(null=True)),
                ("leased_by", models.TextField(null=True)),
            ],
            options={
                "ordering": ["task_id", "-attempt"],
            },
        ),
        # Django's cascade runs in Python; the statements delete tasks in SQL.
        migrations.RunSQL(
            "ALTER TABLE tasks_app_attempt ADD CONSTRAINT tasks_app_attempt_task_fk"
            " FOREIGN KEY (task_id) REFERENCES tasks_app_task (id) ON DELETE CASCADE",
            "ALTER TABLE tasks_app_attempt DROP CONSTRAINT tasks_app_attempt_task_fk",
        ),
    ]
