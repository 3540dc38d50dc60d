"""Delete the per-object grants left behind by objects deleted before the console dropped grants with their object
(console/grant_cleanup.py): a grant-only user's list total is counted from the grants. Plain SQL over the tables
that exist, so it needs no other app's migration state (a fresh database has no grants)."""

from django.db import migrations

# console.roles.GRANTABLE's models when this was written: (app_label, model, table).
GRANTABLE_TABLES = [
    ("console", "credential", "console_credential"),
    ("deployments", "deployment", "deployments_deployment"),
    ("deployments", "dataset", "deployments_dataset"),
    ("deployments", "host", "deployments_host"),
    ("auth", "group", "auth_group"),
]
GRANT_TABLES = ["guardian_userobjectpermission", "guardian_groupobjectpermission"]


def prune(apps, schema_editor) -> None:
    connection = schema_editor.connection
    present = set(connection.introspection.table_names())
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for app_label, model, table in GRANTABLE_TABLES:
            if table not in present:
                continue
            for grants in GRANT_TABLES:
                if grants not in present:
                    continue
                cursor.execute(
                    f"DELETE FROM {quote(grants)} WHERE content_type_id IN "  # noqa: S608 (fixed table names)
                    "(SELECT id FROM django_content_type WHERE app_label = %s AND model = %s) "
                    f"AND object_pk NOT IN (SELECT CAST(id AS TEXT) FROM {quote(table)})",
                    [app_label, model],
                )


class Migration(migrations.Migration):
    dependencies = [
        ("console", "0005_manage_datasets_action"),
        ("guardian", "0003_remove_groupobjectpermission_guardian_gr_content_ae6aec_idx_and_more"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(prune, migrations.RunPython.noop)]
