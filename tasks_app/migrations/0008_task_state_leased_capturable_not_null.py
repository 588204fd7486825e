from django.db import migrations, models

# `task_state_consistent` now also requires `available_at` to be set on a
# leased task with retries left: `available_at = lease_expires_at` alone is
# NULL, and so passes a CHECK, when `available_at` is NULL.
#
# Replaced in two steps, outside a transaction: the new constraint is added
# NOT VALID (a catalog change; the ACCESS EXCLUSIVE lock lasts milliseconds),
# then VALIDATE scans the table under a lock that lets captures, releases
# and sweeps go on. Reversing keeps the stricter constraint, which every
# earlier version's statements satisfy.

NAME = "task_state_consistent"


def replace_constraint(apps, schema_editor):
    task = apps.get_model("tasks_app", "Task")
    (constraint,) = [c for c in task._meta.constraints if c.name == NAME]
    table = schema_editor.quote_name(task._meta.db_table)
    schema_editor.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {NAME}")
    schema_editor.execute(f"{constraint.create_sql(task, schema_editor)} NOT VALID")
    schema_editor.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {NAME}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks_app", "0007_lease_token_attempt"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveConstraint(model_name="task", name=NAME),
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
                                ("available_at", models.F("lease_expires_at")),
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
                        name=NAME,
                    ),
                ),
            ]
        ),
        migrations.RunPython(replace_constraint, migrations.RunPython.noop),
    ]
