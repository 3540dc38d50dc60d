"""Decoupled concerns only: keep the role groups in step with console.roles after every migrate."""

from django.db.models.signals import post_migrate
from django.dispatch import receiver

from console.role_sync import sync_roles


@receiver(post_migrate)
def sync_roles_after_migrate(sender, app_config=None, using="default", **kwargs) -> None:
    if app_config is None or app_config.label != "console":
        return

    sync_roles()
