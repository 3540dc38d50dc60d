"""Create the role groups and their permissions from console.roles. Idempotent.

Run by a data migration, after every migrate (post_migrate), and by `manage.py sync_roles`.
"""

from __future__ import annotations

from console import roles


def sync_roles(apps=None) -> dict[str, list[str]]:
    """Make each role group hold exactly its actions; returns {role: actions}."""
    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")

    capability_type, _ = ContentType.objects.get_or_create(app_label=roles.CAPABILITY_APP, model=roles.CAPABILITY_MODEL)
    by_action = {}
    for action in roles.ACTIONS:
        permission, _ = Permission.objects.get_or_create(
            content_type=capability_type, codename=action, defaults={"name": action.replace("_", " ")}
        )
        by_action[action] = permission
    for label, actions in roles.GRANTABLE.items():
        app_label, model_name = label.split(".", 1)
        model_type, _ = ContentType.objects.get_or_create(app_label=app_label, model=model_name)
        for action in actions:
            Permission.objects.get_or_create(
                content_type=model_type,
                codename=roles.object_codename(action, model_name),
                defaults={"name": f"{action} ({model_name})"},
            )
    result = {}
    for role, actions in roles.ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set([by_action[action] for action in sorted(actions)])
        result[role] = sorted(actions)
    return result
