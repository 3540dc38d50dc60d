"""Create the role groups and their permissions (re-runnable as `manage.py sync_roles`)."""

from django.db import migrations


def create_roles(apps, schema_editor):
    from console.role_sync import sync_roles

    sync_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("console", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
