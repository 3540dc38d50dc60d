"""Decoupled concerns only: keep the role groups in step with console.roles after every migrate; drop the per-object
grants of a deleted object (console/grant_cleanup.py)."""

from django.db.models.signals import post_delete, post_migrate
from django.dispatch import receiver

from console.grant_cleanup import drop_grants, grantable_models
from console.role_sync import sync_roles


@receiver(post_migrate)
def sync_roles_after_migrate(sender, app_config=None, using="default", **kwargs) -> None:
    if app_config is None or app_config.label != "console":
        return

    sync_roles()


def drop_grants_of_deleted(sender, instance, using="default", **kwargs) -> None:
    drop_grants(sender, [instance.pk], using)


# One receiver per grantable model: a receiver for every sender would turn each bulk delete of any model (log lines,
# usage rows) into a fetch and a signal per row (Django fast-deletes only models nobody listens to).
for _model in grantable_models():
    post_delete.connect(drop_grants_of_deleted, sender=_model, dispatch_uid=f"drop-grants:{_model._meta.label_lower}")
