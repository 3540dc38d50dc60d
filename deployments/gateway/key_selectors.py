"""Reads for the keys, service accounts and team quotas pages and API, each starting from the permission rules
(console.permissions), so a list never shows what the user may not manage."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.db.models import Q, QuerySet

from console import roles
from console.accounts.selectors import team_list
from console.permissions import has_global, may_manage_service_accounts, restrict, restrict_to_team
from deployments.gateway.models import InferenceKey, ServiceAccount, TeamQuota
from deployments.serving.models import Deployment


def managed_teams(*, user) -> QuerySet:
    """Teams whose service accounts and quota the user manages (every team for user managers)."""
    teams = team_list()
    if has_global(user, roles.MANAGE_USERS):
        return teams
    mine = teams.filter(pk__in=user.groups.values("pk"))
    return mine.filter(pk__in=[team.pk for team in mine if may_manage_service_accounts(user, team.pk)])


def key_list(*, user) -> QuerySet:
    """Keys the user may manage: their own and those of the service accounts they manage (all for user managers),
    newest first."""
    keys = InferenceKey.objects.select_related("user", "service_account", "team").prefetch_related("deployments")
    if has_global(user, roles.MANAGE_USERS):
        return keys
    return keys.filter(Q(user=user) | Q(service_account__team__in=managed_teams(user=user)))


def service_account_list(*, user) -> QuerySet:
    accounts = ServiceAccount.objects.select_related("team", "created_by")
    if has_global(user, roles.MANAGE_USERS):
        return accounts
    return accounts.filter(team__in=managed_teams(user=user))


def usable_deployments(*, user=None, account: ServiceAccount | None = None) -> QuerySet:
    """Deployments a key of this owner may be scoped to: those the user may use, or the account's team may."""
    deployments = Deployment.objects.order_by("name")
    if account is not None:
        return restrict_to_team(deployments, account.team_id)
    return restrict(deployments, user, roles.USE_DEPLOYMENT)


def team_quota_rows(*, user) -> list[tuple[Group, TeamQuota | None]]:
    """(team, its quota or None) for each team the user manages."""
    teams = list(managed_teams(user=user))
    quotas = {quota.team_id: quota for quota in TeamQuota.objects.filter(team__in=teams).select_related("updated_by")}
    return [(team, quotas.get(team.pk)) for team in teams]
