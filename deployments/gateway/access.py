"""Who is calling and what they may reach: an inference key read once into a Caller, and the one answer per
(caller, deployment) the gateway needs: use it, see it but not use it (403), or not see it at all (404).

Sync (ORM): the gateway calls these in a worker thread and caches the results for GATEWAY_CACHE_SECONDS.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth import get_user_model

from console import permissions, roles
from deployments.gateway import keys, quotas
from deployments.serving.models import Deployment

USE, DENIED, HIDDEN = "use", "denied", "hidden"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Caller:
    key_id: int
    prefix: str
    owner: str  # username, or service:<name>
    user_id: int | None
    account_team_id: int | None  # a service account's team (its keys act with the team's grants)
    team_id: int | None  # whose quota the calls count against
    all_deployments: bool
    deployment_ids: frozenset[int]
    expires_at: datetime
    networks: tuple[Network, ...] = field(default=())
    scope: quotas.Scope | None = None

    def allows_source(self, address: str | None) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def caller_for(raw: str) -> Caller | None:
    """The caller a raw key names, or None for an unknown, revoked or expired key."""
    key = keys.authenticate(raw)
    if key is None:
        return None
    account = key.service_account
    return Caller(
        key_id=key.pk,
        prefix=key.prefix,
        owner=key.owner_name,
        user_id=key.user_id,
        account_team_id=account.team_id if account else None,
        team_id=key.team_id,
        all_deployments=key.all_deployments,
        deployment_ids=frozenset(key.deployments.values_list("pk", flat=True)),
        expires_at=key.expires_at,
        networks=tuple(ipaddress.ip_network(source, strict=False) for source in key.allowed_sources or []),
        scope=quotas.scope_for(key),
    )


def _owner_rights(caller: Caller, deployment: Deployment) -> tuple[bool, bool]:
    """(may see, may use) for the key's owner: a user's roles and grants, or a service account's team's."""
    if caller.user_id is not None:
        user = get_user_model().objects.filter(pk=caller.user_id, is_active=True).first()
        if user is None:
            return False, False
        return permissions.can(user, roles.VIEW, deployment), permissions.can(user, roles.USE_DEPLOYMENT, deployment)
    team = caller.account_team_id
    return (
        permissions.team_may_see_deployment(team, deployment),
        permissions.team_may_use_deployment(team, deployment),
    )


def access(caller: Caller, deployment_id: int) -> str:
    """USE, DENIED (visible to the owner, but the key or the owner may not use it) or HIDDEN."""
    deployment = Deployment.objects.filter(pk=deployment_id).first()
    if deployment is None:
        return HIDDEN
    may_see, may_use = _owner_rights(caller, deployment)
    if not may_see and not may_use:
        return HIDDEN
    in_scope = caller.all_deployments or deployment.pk in caller.deployment_ids
    return USE if may_use and in_scope else DENIED


def usable_names(caller: Caller) -> list[tuple[str, tuple[str, ...], str]]:
    """(name, adapters, owning team's name) of every deployment the key may call, for GET /v1/models."""
    listed = Deployment.objects.select_related("spec", "team").order_by("name")
    if not caller.all_deployments:
        listed = listed.filter(pk__in=caller.deployment_ids)
    result = []
    for deployment in listed:
        if access(caller, deployment.pk) != USE:
            continue
        adapters = tuple(
            a["name"] for a in (deployment.spec.lora_adapters if deployment.spec_id else []) if a.get("name")
        )
        result.append((deployment.name, adapters, deployment.team.name if deployment.team_id else ""))
    return result
