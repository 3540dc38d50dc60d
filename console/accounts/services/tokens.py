"""Personal API tokens: created once, stored hashed, revoked by their owner or a user manager."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

import audit
from audit.telemetry import traced
from console import roles
from console.accounts.models import ApiToken, hash_token
from console.accounts.services import token_cache
from console.errors import ApplicationError
from console.permissions import global_actions, require


def _require_owner_or_manager(actor, user) -> None:
    if actor.pk != user.pk:
        require(actor, roles.MANAGE_USERS)


@traced("token.create")
@transaction.atomic
def token_create(
    *, actor, user, name: str, expires_at: datetime | None = None, scope: str = ApiToken.Scope.WRITE
) -> tuple[ApiToken, str]:
    """Create a token for user; returns it with its one-time plain value (never stored). Every token expires,
    at most API_TOKEN_MAX_DAYS from now."""
    _require_owner_or_manager(actor, user)
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise ApplicationError("The expiry must lie in the future.", field="expires_at")
    if expires_at is not None and expires_at > now + timedelta(days=settings.API_TOKEN_MAX_DAYS):
        raise ApplicationError(
            f"A token lives at most {settings.API_TOKEN_MAX_DAYS} days (API_TOKEN_MAX_DAYS).", field="expires_at"
        )
    if scope not in ApiToken.Scope.values:
        raise ApplicationError(f"The scope is one of {', '.join(ApiToken.Scope.values)}.", field="scope")
    raw = ApiToken.generate()
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=raw[:12],
        digest=hash_token(raw),
        expires_at=expires_at or ApiToken.default_expiry(),
        scope=scope,
    )
    audit.record(
        action="token.created",
        actor=actor,
        target=token,
        detail={"owner": user.get_username(), "expires_at": token.expires_at.isoformat(), "scope": token.scope},
    )
    return token, raw


@traced("token.revoke")
@transaction.atomic
def token_revoke(*, actor, token: ApiToken) -> ApiToken:
    _require_owner_or_manager(actor, token.user)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit.record(action="token.revoked", actor=actor, target=token, detail={"owner": token.user.get_username()})
    return token


def token_authenticate(raw: str) -> ApiToken | None:
    """The usable token with this value, or None. Marks it used (at most once a minute, give or take the cache).

    This runs on every API call: a token found usable is kept in token_cache with its user and their roles for a
    few seconds, so most calls ask the database nothing. Expiry is checked on every call; revocation, deactivation
    and role changes empty the cache (in other processes they take effect within token_cache.TTL_SECONDS)."""
    digest = hash_token(raw)
    token = token_cache.get(digest)
    if token is not None:
        if token.is_active:
            return token
        token_cache.forget(digest)
        return None
    try:
        token = ApiToken.objects.select_related("user").get(digest=digest)
    except ApiToken.DoesNotExist:
        return None
    if not token.is_active:
        return None
    global_actions(token.user)  # read with the token, kept with it in the cache
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    token_cache.put(digest, token)
    return token_cache.get(digest) or token
