"""Install the triggers that make the audit tables append-only (see audit/guard.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from audit import guard

    guard.install(schema_editor.connection, guard.AUDIT_TABLES)


def uninstall(apps, schema_editor):
    from audit import guard

    guard.uninstall(schema_editor.connection, guard.AUDIT_TABLES)


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_events")]

    operations = [migrations.RunPython(install, uninstall)]
