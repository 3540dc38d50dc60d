"""Make the inference log append-only: the audit guard's triggers on the gateway's records and their sealed batches
(audit/guard.py). The tables exist since 0009_gateway. A later migration that rebuilds either table on SQLite (an
altered column copies the table) must install the guard again."""

from django.db import migrations


def install(apps, schema_editor):
    from audit import guard

    guard.install(schema_editor.connection, guard.INFERENCE_TABLES)


def uninstall(apps, schema_editor):
    from audit import guard

    guard.uninstall(schema_editor.connection, guard.INFERENCE_TABLES)


class Migration(migrations.Migration):
    dependencies = [("deployments", "0009_gateway"), ("audit", "0002_append_only_guard")]

    operations = [migrations.RunPython(install, uninstall)]
