"""Login, logout, failed logins, lockouts and permission denials become audit events (decoupled: Django's
auth signals and console.permissions.permission_denied)."""

from __future__ import annotations

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
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


@receiver(user_login_failed)
def on_login_failed(sender, credentials, request=None, **kwargs) -> None:
    # Django already masks the password in `credentials`; only the username is kept.
    username = str(credentials.get("username", ""))[:150]
    audit.record(action="auth.login_failed", actor=None, actor_name=username or "(no username)", outcome="failure")


@receiver(user_locked_out)
def on_locked_out(sender, request, username=None, ip_address=None, **kwargs) -> None:
    audit.record(
        action="auth.locked_out",
        actor=None,
        actor_name=str(username or "")[:150] or "(no username)",
        outcome="denied",
        detail={"reason": "too many failed logins"},
    )


@receiver(permission_denied)
def on_permission_denied(sender, exc, user=None, path: str = "", status: int = 403, **kwargs) -> None:
    record_denial(exc, user=user, path=path, status=status)
