# Nullable columns and an index of a small table: no rewrite, no long lock.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("namespaces_app", "0002_namespace_settings"),
    ]

    operations = [
        migrations.AddField(
            model_name="namespace",
            name="max_in_flight",
            field=models.IntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="namespace",
            name="paused_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="namespace",
            index=models.Index(
                condition=models.Q(("max_in_flight__isnull", False)),
                fields=["id"],
                name="namespace_limited_idx",
            ),
        ),
        migrations.AddConstraint(
            model_name="namespace",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("max_in_flight__gte", 1), ("max_in_flight__isnull", True), _connector="OR"
                ),
                name="namespace_max_in_flight_range",
            ),
        ),
    ]
