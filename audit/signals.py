"""Login, logout and permission denials become audit events (decoupled: Django's auth signals and
console.permissions.permission_denied). Failed logins and lockouts are recorded by the login throttle
(console/accounts/throttle.py), which collapses repeated failures from one address into counted events."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.core.management import call_command
from django.db.models.signals import post_migrate
from django.dispatch import receiver

import audit
from audit.denials import record_denial
from console.permissions import permission_denied


@receiver(user_logged_in)
def on_login(sender, request, user, **kwargs) -> None:
    audit.record(action="auth.login", actor=user)


@receiver(user_logged_out)
def on_logout(sender, request, user, **kwargs) -> None:
    if user is not None:
        audit.record(action="auth.logout", actor=user)


@receiver(permission_denied)
def on_permission_denied(sender, exc, user=None, path: str = "", status: int = 403, **kwargs) -> None:
    record_denial(exc, user=user, path=path, status=status)


@receiver(post_migrate)
def app_role_after_migrate(sender, app_config=None, using: str = "default", **kwargs) -> None:
    """Where a password for the application's database role is configured, migrate (run as the owner) creates
    that role and grants it what it may do, including on the tables this migration added."""
    if app_config is None or app_config.label != "audit" or not settings.DATABASE_APP_PASSWORD:
        return
    call_command("audit_db_roles", verbosity=0)
