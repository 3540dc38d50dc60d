"""Teams: the groups that own deployments and credentials and receive grants (every group that is not a role).
Created, renamed, given members and deleted by user managers; every change is one audit event."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

import audit
from audit.telemetry import traced
from console import roles
from console.accounts.selectors import team_holdings
from console.errors import ApplicationError
from console.permissions import require

User = get_user_model()

NAME_MAX = 150  # auth.Group.name
# Letters (any script), digits, spaces and - _ . : a name people read in lists and audit events, never markup.
NAME_RE = re.compile(r"^\w[\w .-]*$")


def _clean_name(name: str, *, team: Group | None = None) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise ApplicationError("A team needs a name.", field="name")
    if len(name) > NAME_MAX:
        raise ApplicationError(f"A team name has at most {NAME_MAX} characters.", field="name")
    if not NAME_RE.match(name):
        raise ApplicationError("A team name has letters, digits, spaces, '-', '_' and '.' only.", field="name")
    if name.lower() in {role.lower() for role in roles.ROLES}:
        raise ApplicationError(f"'{name}' is a role name; choose another name for the team.", field="name")
    clash = Group.objects.filter(name__iexact=name)
    if team is not None:
        clash = clash.exclude(pk=team.pk)
    if clash.exists():
        raise ApplicationError(f"A team named '{name}' exists.", field="name")
    return name


def _check_team(team: Group) -> None:
    if team.name in roles.ROLES:  # roles are changed on a person's access page, never here
        raise ApplicationError(f"'{team.name}' is a role, not a team.", field="team")


@traced("team.create")
@transaction.atomic
def team_create(*, actor, name: str) -> Group:
    """A new, empty team. Needs manage_users; a team's name is unique (case aside) and never a role's."""
    require(actor, roles.MANAGE_USERS)
    team = Group.objects.create(name=_clean_name(name))
    audit.record(action="team.created", actor=actor, target=team, changes={"name": [None, team.name]})
    return team


@traced("team.rename")
@transaction.atomic
def team_rename(*, actor, team: Group, name: str) -> Group:
    require(actor, roles.MANAGE_USERS)
    _check_team(team)
    name = _clean_name(name, team=team)
    if name == team.name:
        return team
    before = team.name
    team.name = name
    team.save(update_fields=["name"])
    audit.record(action="team.renamed", actor=actor, target=team, changes={"name": [before, name]})
    return team


@traced("team.member_add")
@transaction.atomic
def team_member_add(*, actor, team: Group, user) -> None:
    """Make user a member: they act for the team (its deployments, credentials and grants)."""
    require(actor, roles.MANAGE_USERS)
    _check_team(team)
    if team.user_set.filter(pk=user.pk).exists():
        return
    team.user_set.add(user)
    audit.record(action="team.member_added", actor=actor, target=team, detail={"member": user.get_username()})


@traced("team.member_remove")
@transaction.atomic
def team_member_remove(*, actor, team: Group, user) -> None:
    require(actor, roles.MANAGE_USERS)
    _check_team(team)
    if not team.user_set.filter(pk=user.pk).exists():
        return
    team.user_set.remove(user)
    audit.record(action="team.member_removed", actor=actor, target=team, detail={"member": user.get_username()})


@traced("team.delete")
@transaction.atomic
def team_delete(*, actor, team: Group) -> None:
    """Delete a team that owns nothing (no deployments, credentials or grants, to it or on it): what it owns
    would silently become everyone's. Its members stay; they only leave the team."""
    require(actor, roles.MANAGE_USERS)
    _check_team(team)
    team = Group.objects.select_for_update().get(pk=team.pk)
    held = team_holdings(team=team)
    if held:
        owned = ", ".join(f"{count} {what}" for what, count in held.items())
        raise ApplicationError(f"Team '{team.name}' still owns {owned}: move or delete them first.", field="team")
    members = sorted(team.user_set.values_list("username", flat=True))
    audit.record(action="team.deleted", actor=actor, target=team, detail={"members": members})
    team.delete()
