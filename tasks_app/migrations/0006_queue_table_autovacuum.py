from django.db import migrations

# The task table is a queue table: every capture and release writes a new
# version of its rows (the indexed lease columns change, so never a HOT
# update), and the old versions' entries stay in `task_capture_idx` at the
# head of their namespace's range, where every capture starts its scan, until
# a vacuum removes them. With PostgreSQL's defaults a table is vacuumed after
# 20% of its rows changed; a busy namespace's captures then walk ever more dead
# entries (a capture of 10 went from 4 to 2,794 buffers in a minute of churn,
# docs/benchmarks.md). So this table is vacuumed after about 1% of churn.
SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    # Fresh statistics for the capture and sweep plans as the mix of states moves.
    "autovacuum_analyze_scale_factor": "0.02",
    # Without it a vacuum skips the indexes when under 2% of the heap's pages
    # hold dead rows: exactly a busy namespace in a large table, whose dead
    # index entries are the ones that slow its captures.
    "vacuum_index_cleanup": "on",
}


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0005_id_c_collation"),
    ]

    operations = [
        # SHARE UPDATE EXCLUSIVE: captures and releases go on meanwhile.
        migrations.RunSQL(
            "ALTER TABLE tasks_app_task SET ("
            + ", ".join(f"{name} = {value}" for name, value in SETTINGS.items())
            + ")",
            "ALTER TABLE tasks_app_task RESET (" + ", ".join(SETTINGS) + ")",
        ),
    ]
