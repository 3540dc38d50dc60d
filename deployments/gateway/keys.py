"""Inference keys, service accounts and team quotas: the services that change them (each audited, each telling
running gateways to forget what they cached) and `authenticate`, the gateway's key lookup.

A key's raw value is returned once by key_create and never stored: the database holds its SHA-256 digest and
its first characters (the prefix), and the audit log names keys by prefix only."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

import audit
from audit.telemetry import traced
from console import roles
from console.errors import ApplicationError
from console.permissions import (
    ActionDenied,
    can,
    has_global,
    may_manage_service_accounts,
    may_use_some_deployment,
    require_inference_key,
    team_may_use_deployment,
)
from deployments.gateway import cache
from deployments.gateway.models import InferenceKey, ServiceAccount, TeamQuota, hash_key
from deployments.serving.models import Deployment

# Limit names (QuotaFields.limits) -> model fields, with the largest value each column holds.
LIMIT_FIELDS = {
    "rpm": ("requests_per_minute", 2**31 - 1),
    "tpm": ("tokens_per_minute", 2**31 - 1),
    "tpd": ("tokens_per_day", 2**63 - 1),
}
MAX_SOURCES = 64
PREFIX_LENGTH = 12  # "llk_" and 8 random characters: enough to tell keys apart, far too few to guess one
_UNSET = object()


def _invalidate() -> None:
    # After commit: a gateway that reloads at once must find the new state. robust: a Redis hiccup only delays
    # the change by the gateway's cache time (GATEWAY_CACHE_SECONDS), it does not fail the change.
    transaction.on_commit(cache.invalidate_keys, robust=True)


# -- validation ------------------------------------------------------------------------------------------------
def parse_sources(values: Iterable[str]) -> list[str]:
    """Addresses and CIDR networks, as canonical network text ("10.0.0.0/8", "192.0.2.7/32"), without repeats."""
    networks: list[str] = []
    for value in values:
        text = value.strip() if isinstance(value, str) else ""
        try:
            network = str(ipaddress.ip_network(text, strict=True))
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ApplicationError(
                    _("%(value)s is not an IP address or a network in CIDR notation (10.0.0.0/8).")
                    % {"value": text[:60] or '""'},
                    field="allowed_sources",
                ) from None
            raise ApplicationError(
                _("%(value)s has host bits set: write the network as %(network)s.") % {"value": text, "network": loose},
                field="allowed_sources",
            ) from None
        if network not in networks:
            networks.append(network)
    if len(networks) > MAX_SOURCES:
        raise ApplicationError(_("At most %(n)d addresses or networks.") % {"n": MAX_SOURCES}, field="allowed_sources")
    return networks


def parse_limits(limits: dict | None) -> dict[str, int | None]:
    """{"rpm": 60, "tpm": None, ...} -> model field values; a missing or empty limit is no limit."""
    limits = limits or {}
    unknown = sorted(set(limits) - set(LIMIT_FIELDS))
    if unknown:
        raise ApplicationError(
            _("Unknown limits: %(names)s (rpm, tpm, tpd).") % {"names": ", ".join(map(str, unknown))}, field="limits"
        )
    values: dict[str, int | None] = {}
    for name, (field, largest) in LIMIT_FIELDS.items():
        value = limits.get(name)
        if value in (None, ""):
            values[field] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
            raise ApplicationError(
                _("A whole number from 1 to %(largest)d; leave it empty for no limit.") % {"largest": largest},
                field=name,
            )
        values[field] = value
    return values


def _expiry(days: int | None):
    days = settings.INFERENCE_KEY_DEFAULT_DAYS if days is None else days
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ApplicationError(_("A key lives at least one day."), field="days")
    if days > settings.INFERENCE_KEY_MAX_DAYS:
        raise ApplicationError(
            _("A key lives at most %(days)d days (INFERENCE_KEY_MAX_DAYS).")
            % {"days": settings.INFERENCE_KEY_MAX_DAYS},
            field="days",
        )
    return timezone.now() + timedelta(days=days)


def _name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ApplicationError(_("Give the key a name of 1 to 100 characters."), field="name")
    return name


def _check_scope(deployments: list[Deployment], *, user=None, account: ServiceAccount | None = None) -> None:
    """Every listed deployment must be one the owner may use: the user's use_deployment, or the account's team."""
    if account is not None:
        refused = [d for d in deployments if not team_may_use_deployment(account.team_id, d)]
    else:
        refused = [d for d in deployments if not can(user, roles.USE_DEPLOYMENT, d)]
    if refused:
        raise ApplicationError(not_usable_message([d.name for d in refused]), field="deployments")


def not_usable_message(names: list[str]) -> str:
    """One wording for a deployment the owner may not use and one that does not exist (no enumeration)."""
    return _("Not a deployment the key's owner may use: %(names)s.") % {"names": ", ".join(names)}


def user_teams(user):
    """The teams a user key may count against: the owner's teams (groups that are not roles)."""
    return user.groups.exclude(name__in=list(roles.ROLES)).order_by("name")


def _check_team(team: Group | None, *, user=None, account: ServiceAccount | None = None) -> Group | None:
    if account is not None:
        if team is not None and team.pk != account.team_id:
            raise ApplicationError(_("A service account's keys count against its own team."), field="team")
        return account.team
    if team is not None and not user_teams(user).filter(pk=team.pk).exists():
        raise ApplicationError(_("Choose one of the owner's teams."), field="team")
    return team


def _require_account_manager(actor, account: ServiceAccount) -> None:
    if not may_manage_service_accounts(actor, account.team_id):
        raise ActionDenied(actor, "manage the service accounts of this team", account)


def _key_detail(key: InferenceKey) -> dict:
    """What the audit log says about a key: never its value, only its prefix."""
    return {
        "name": key.name,
        "owner": key.owner_name,
        "prefix": key.prefix,
        "team": key.team.name if key.team_id else None,
        "expires_at": key.expires_at.isoformat(),
        "all_deployments": key.all_deployments,
        "deployments": sorted(key.deployments.values_list("name", flat=True)),
        "allowed_sources": key.allowed_sources,
        "limits": key.limits,
    }


# -- keys ------------------------------------------------------------------------------------------------------
@traced("inference_key.create")
@transaction.atomic
def key_create(
    *,
    actor,
    name: str,
    days: int | None = None,
    user=None,
    service_account: ServiceAccount | None = None,
    team: Group | None = None,
    deployments: Iterable[Deployment] = (),
    all_deployments: bool = False,
    allowed_sources: Iterable[str] = (),
    limits: dict | None = None,
) -> tuple[InferenceKey, str]:
    """Create a key for `user` (default: the actor) or for `service_account`; returns it with its raw value,
    which is shown once and never stored. People make their own keys (user managers anyone's); service
    accounts' keys are made by those who manage the account's team."""
    if user is not None and service_account is not None:
        raise ApplicationError(_("A key belongs to a user or to a service account, not both."))
    if service_account is not None:
        _require_account_manager(actor, service_account)
        if service_account.disabled_at is not None:
            raise ApplicationError(_("The service account is disabled."), field="service_account")
    else:
        user = user or actor
        if user.pk != actor.pk and not has_global(actor, roles.MANAGE_USERS):
            raise ActionDenied(actor, "create an inference key for another user")
        if not may_use_some_deployment(user):
            if user.pk == actor.pk:
                raise ActionDenied(actor, roles.USE_DEPLOYMENT)
            raise ApplicationError(_("This user may use no deployment."), field="user")
    values = {
        "name": _name(name),
        "expires_at": _expiry(days),
        "allowed_sources": parse_sources(allowed_sources),
        "team": _check_team(team, user=user, account=service_account),
        **parse_limits(limits),
    }
    listed = [] if all_deployments else list(dict.fromkeys(deployments))
    if not all_deployments and not listed:
        raise ApplicationError(
            _("Choose at least one deployment, or every deployment the owner may use."), field="deployments"
        )
    _check_scope(listed, user=user, account=service_account)
    raw = InferenceKey.generate()
    key = InferenceKey.objects.create(
        **values,
        user=None if service_account else user,
        service_account=service_account,
        all_deployments=bool(all_deployments),
        prefix=raw[:PREFIX_LENGTH],
        digest=hash_key(raw),
        created_by=actor,
    )
    key.deployments.set(listed)
    audit.record(action="inference_key.created", actor=actor, target=key, detail=_key_detail(key))
    _invalidate()
    return key, raw


@traced("inference_key.update")
@transaction.atomic
def key_update(
    *,
    actor,
    key: InferenceKey,
    name: str | None = None,
    team=_UNSET,
    deployments: Iterable[Deployment] | None = None,
    all_deployments: bool | None = None,
    allowed_sources: Iterable[str] | None = None,
    limits: dict | None = None,
) -> InferenceKey:
    """Change what a key may reach and how much; arguments left out stay as they are (`limits` names the limits
    it changes, None clearing one). Its value and expiry never change: make a new key for those."""
    require_inference_key(actor, key)
    if not key.is_active:
        raise ApplicationError(_("A revoked or expired key cannot be changed: make a new one."))
    before = _key_detail(key)
    account = key.service_account
    if name is not None:
        key.name = _name(name)
    if team is not _UNSET:
        key.team = _check_team(team, user=key.user, account=account)
    if allowed_sources is not None:
        key.allowed_sources = parse_sources(allowed_sources)
    if limits is not None:
        current = {name: value for name, value in key.limits.items()}
        for field, value in parse_limits({**current, **limits}).items():
            setattr(key, field, value)
    if all_deployments is not None:
        key.all_deployments = bool(all_deployments)
    listed = None  # unchanged
    if key.all_deployments:
        listed = []
    elif deployments is not None:
        listed = list(dict.fromkeys(deployments))
        _check_scope(listed, user=key.user, account=account)
    if not key.all_deployments and not (listed if listed is not None else key.deployments.exists()):
        raise ApplicationError(
            _("Choose at least one deployment, or every deployment the owner may use."), field="deployments"
        )
    key.save()
    if listed is not None:
        key.deployments.set(listed)
    after = _key_detail(key)
    changes = {field: [before[field], after[field]] for field in after if before[field] != after[field]}
    audit.record(
        action="inference_key.updated", actor=actor, target=key, changes=changes, detail={"prefix": key.prefix}
    )
    _invalidate()
    return key


@traced("inference_key.revoke")
@transaction.atomic
def key_revoke(*, actor, key: InferenceKey) -> InferenceKey:
    """Revoke a key at once (running gateways drop it from their caches); revoking twice changes nothing."""
    require_inference_key(actor, key)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit.record(
            action="inference_key.revoked",
            actor=actor,
            target=key,
            detail={"owner": key.owner_name, "prefix": key.prefix},
        )
        _invalidate()
    return key


def authenticate(raw: str) -> InferenceKey | None:
    """The usable key with this value (not revoked, not expired, its service account enabled, its user active),
    with its user, service account and team, or None. For the gateway; one indexed lookup."""
    if not isinstance(raw, str) or not raw or len(raw) > 256:
        return None
    try:
        digest = hash_key(raw)
    except UnicodeEncodeError:  # a lone surrogate cannot be a key
        return None
    key = InferenceKey.objects.usable().select_related("user", "service_account", "team").filter(digest=digest).first()
    if key is None:
        return None
    if key.service_account_id is not None and key.service_account.disabled_at is not None:
        return None
    if key.user_id is not None and not key.user.is_active:
        return None
    return key


# -- service accounts and team quotas --------------------------------------------------------------------------
def _team(team: Group | None) -> Group:
    if team is None or team.name in roles.ROLES:
        raise ApplicationError(_("Choose a team (a role is not a team)."), field="team")
    return team


@traced("service_account.create")
@transaction.atomic
def service_account_create(*, actor, name: str, team: Group, description: str = "") -> ServiceAccount:
    """A caller for applications, owned by `team`: its keys act with the team's deployment grants."""
    team = _team(team)
    if not may_manage_service_accounts(actor, team.pk):
        raise ActionDenied(actor, f"manage the service accounts of team {team.name}")
    name = (name or "").strip()
    if ServiceAccount.objects.filter(name=name).exists():
        raise ApplicationError(_("A service account with this name exists."), field="name")
    account = ServiceAccount(name=name, team=team, description=(description or "").strip(), created_by=actor)
    try:
        account.full_clean(exclude=["created_by", "team"])
    except ValidationError as error:  # the slug rule, the lengths
        field, messages = next(iter(error.message_dict.items()))
        raise ApplicationError(" ".join(messages), field=field) from None
    account.save()
    audit.record(
        action="service_account.created",
        actor=actor,
        target=account,
        detail={"team": team.name, "description": account.description},
    )
    return account


@traced("service_account.disable")
@transaction.atomic
def service_account_disable(*, actor, account: ServiceAccount) -> ServiceAccount:
    """Disable an account and revoke its keys (they stop working at once); its history stays."""
    _require_account_manager(actor, account)
    if account.disabled_at is not None:
        return account
    now = timezone.now()
    account.disabled_at = now
    account.save(update_fields=["disabled_at"])
    keys = account.keys.filter(revoked_at__isnull=True)
    prefixes = list(keys.values_list("prefix", flat=True))
    keys.update(revoked_at=now)
    audit.record(
        action="service_account.disabled",
        actor=actor,
        target=account,
        detail={"team": account.team.name, "revoked_keys": prefixes},
    )
    _invalidate()
    return account


@traced("team_quota.set")
@transaction.atomic
def team_quota_set(*, actor, team: Group, limits: dict | None) -> TeamQuota:
    """Set a team's limits, shared by every key that counts against the team; an empty limit is no limit."""
    team = _team(team)
    if not may_manage_service_accounts(actor, team.pk):
        raise ActionDenied(actor, f"set the quota of team {team.name}")
    values = parse_limits(limits)
    quota = TeamQuota.objects.select_for_update().filter(team=team).first() or TeamQuota(team=team)
    before = quota.limits
    for field, value in values.items():
        setattr(quota, field, value)
    quota.updated_by = actor
    quota.save()
    changes = {name: [before.get(name), quota.limits.get(name)] for name in LIMIT_FIELDS}
    changes = {name: pair for name, pair in changes.items() if pair[0] != pair[1]}
    audit.record(action="team_quota.set", actor=actor, target=quota, changes=changes, detail={"team": team.name})
    _invalidate()
    return quota
