"""Passwords: a person changes their own; an admin sets a temporary one that must be changed at the next login.
Every new password passes AUTH_PASSWORD_VALIDATORS; events name who and when, never a password or its hash."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

import audit
from audit.telemetry import traced
from console import roles
from console.accounts.models import ApiToken, PasswordState
from console.accounts.services.tokens import token_revoke
from console.errors import ApplicationError
from console.permissions import require

User = get_user_model()


def password_check(password: str, *, user, field: str = "password") -> None:
    """AUTH_PASSWORD_VALIDATORS for user's new password, as one error on `field`."""
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ApplicationError(" ".join(exc.messages), field=field) from None


def _set(user, password: str, *, must_change: bool, reset_by=None) -> None:
    user.set_password(password)
    user.save(update_fields=["password"])
    PasswordState.objects.update_or_create(
        user=user, defaults={"must_change": must_change, "changed_at": timezone.now(), "reset_by": reset_by}
    )


@traced("password.change")
@transaction.atomic
def password_change(*, actor, current_password: str, new_password: str) -> None:
    """A person changes their own password: the current one proves it is them; the new one passes the
    validators and differs from it. Clears a "must change" mark."""
    if not actor.check_password(current_password):
        raise ApplicationError(_("The current password is wrong."), field="current_password")
    if new_password == current_password:
        raise ApplicationError(_("The new password must differ from the current one."), field="new_password")
    password_check(new_password, user=actor, field="new_password")
    was_required = PasswordState.objects.filter(user=actor, must_change=True).exists()
    _set(actor, new_password, must_change=False)
    audit.record(action="user.password_changed", actor=actor, target=actor, detail={"was_required": was_required})


@traced("password.reset")
@transaction.atomic
def password_reset(*, actor, user, new_password: str, revoke_tokens: bool = False) -> int:
    """An admin sets a temporary password; its holder must change it at the next login, and their open
    sessions end (the session hash changes). Needs manage_users. revoke_tokens: also revoke the person's API
    tokens (each its own event), for a password that may have leaked. Returns the number of tokens revoked."""
    require(actor, roles.MANAGE_USERS)
    password_check(new_password, user=user)
    _set(user, new_password, must_change=True, reset_by=actor)
    revoked = 0
    if revoke_tokens:
        for token in ApiToken.objects.usable().filter(user=user):
            token_revoke(actor=actor, token=token)
            revoked += 1
    audit.record(
        action="user.password_reset",
        actor=actor,
        target=user,
        detail={"must_change": True, "tokens_revoked": revoked},
    )
    return revoked
