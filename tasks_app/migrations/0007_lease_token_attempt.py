from django.db import migrations, models

# Both columns are added without rewriting the table or scanning it: a NULL
# column and a constant default are catalog changes only, so the ACCESS
# EXCLUSIVE lock lasts milliseconds even with millions of tasks. Tasks leased
# before this migration have no token: only the seed's `task_ids` form (or the
# sweeper) ends their leases.


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0006_queue_table_autovacuum"),
    ]

    operations = [
        migrations.AddField(
            model_name="task",
            name="attempt",
            field=models.IntegerField(db_default=0, default=0, editable=False),
        ),
        migrations.AddField(
            model_name="task",
            name="lease_token",
            field=models.UUIDField(blank=True, editable=False, null=True),
        ),
    ]
