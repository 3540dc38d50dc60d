"""Roles and per-object grants: who may do what. Every change is one audit event."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Model
from guardian.shortcuts import assign_perm, remove_perm

import audit
from audit.telemetry import traced
from console import roles
from console.accounts.services.passwords import password_check
from console.errors import ApplicationError
from console.permissions import grantable, require, user_roles

User = get_user_model()


def _role_group(role: str) -> Group:
    if role not in roles.ROLES:
        raise ApplicationError(f"Unknown role '{role}'. Choose one of: {', '.join(roles.ROLES)}.", field="role")
    group, _ = Group.objects.get_or_create(name=role)
    return group


@traced("role.grant")
@transaction.atomic
def role_grant(*, actor, user, role: str) -> None:
    """Give user a role. An admin can grant roles when: they hold manage_users."""
    require(actor, roles.MANAGE_USERS)
    group = _role_group(role)
    before = user_roles(user)
    if role in before:
        return
    user.groups.add(group)
    audit.record(action="role.granted", actor=actor, target=user, changes={"roles": [before, user_roles(user)]})


@traced("role.revoke")
@transaction.atomic
def role_revoke(*, actor, user, role: str) -> None:
    """Take a role away. The last active admin cannot lose the admin role (nobody could undo it)."""
    require(actor, roles.MANAGE_USERS)
    group = _role_group(role)
    before = user_roles(user)
    if role not in before:
        return
    if role == roles.ADMIN and not group.user_set.filter(is_active=True).exclude(pk=user.pk).exists():
        raise ApplicationError("This is the last active admin; make someone else admin first.", field="roles")
    user.groups.remove(group)
    audit.record(action="role.revoked", actor=actor, target=user, changes={"roles": [before, user_roles(user)]})


@transaction.atomic
def roles_set(*, actor, user, role_names: list[str]) -> list[str]:
    """Make user hold exactly role_names; returns the roles now held (one event per role changed)."""
    require(actor, roles.MANAGE_USERS)
    wanted = set(role_names)
    for role in wanted:
        _role_group(role)
    current = set(user_roles(user))
    for role in sorted(current - wanted):
        role_revoke(actor=actor, user=user, role=role)
    for role in sorted(wanted - current):
        role_grant(actor=actor, user=user, role=role)
    return user_roles(user)


def _check_grant(target: Model, action: str, grantee) -> str:
    if not isinstance(grantee, User | Group):
        raise ApplicationError("A grant goes to a user or a team.", field="grantee")
    if isinstance(grantee, Group) and grantee.name in roles.ROLES:
        raise ApplicationError("Grant to a user or a team, not to a role group.", field="grantee")
    if not grantable(type(target), action):
        allowed = ", ".join(roles.GRANTABLE.get(target._meta.label_lower, ())) or "nothing"
        raise ApplicationError(
            f"'{action}' cannot be granted on a {target._meta.verbose_name}; allowed: {allowed}.", field="action"
        )
    _check_team_scope(target, grantee)
    return roles.object_codename(action, target._meta.model_name)


def _check_team_scope(target: Model, grantee) -> None:
    """The team scopes of deploy (console.permissions.deploy_scope_allows) belong to a team: deploy on a host goes
    to a team, deploy on every deployment a team owns goes to that same team."""
    label = target._meta.label_lower
    if label not in ("deployments.host", "auth.group"):
        return
    if not isinstance(grantee, Group):
        raise ApplicationError("Deploy on a host or on a team's deployments is granted to a team.", field="team")
    if label == "auth.group" and (target.pk != grantee.pk or target.name in roles.ROLES):
        raise ApplicationError(
            "Deploy on every deployment a team owns is granted to that same team.", field="target_name"
        )


def _held(grantee, target: Model) -> list[str]:
    """Codenames granted directly to this grantee on target (whatever the grantee's state)."""
    from django.contrib.contenttypes.models import ContentType
    from guardian.models import GroupObjectPermission, UserObjectPermission

    rows = (
        GroupObjectPermission.objects.filter(group=grantee)
        if isinstance(grantee, Group)
        else UserObjectPermission.objects.filter(user=grantee)
    )
    rows = rows.filter(content_type=ContentType.objects.get_for_model(target), object_pk=str(target.pk))
    return list(rows.values_list("permission__codename", flat=True))


def _grantee_detail(grantee, action: str) -> dict:
    kind = "team" if isinstance(grantee, Group) else "user"
    return {"grantee_type": kind, "grantee": str(grantee), "granted_action": action}


@traced("grant.add")
@transaction.atomic
def object_grant(*, actor, grantee, action: str, target: Model) -> None:
    """Let a user or team hold action on one object. Needs manage_users."""
    require(actor, roles.MANAGE_USERS)
    codename = _check_grant(target, action, grantee)
    if codename in _held(grantee, target):
        return
    assign_perm(codename, grantee, target)
    audit.record(action="grant.added", actor=actor, target=target, detail=_grantee_detail(grantee, action))


@traced("grant.revoke")
@transaction.atomic
def object_revoke(*, actor, grantee, action: str, target: Model) -> None:
    require(actor, roles.MANAGE_USERS)
    codename = _check_grant(target, action, grantee)
    if codename not in _held(grantee, target):
        return
    remove_perm(codename, grantee, target)
    audit.record(action="grant.revoked", actor=actor, target=target, detail=_grantee_detail(grantee, action))


@traced("user.create")
@transaction.atomic
def user_create(*, actor, username: str, password: str, email: str = "", role_names: list[str] = ()) -> User:
    """Create a login for a person, with its roles. Needs manage_users."""
    require(actor, roles.MANAGE_USERS)
    _username_check(username)
    if User.objects.filter(username__iexact=username).exists():
        raise ApplicationError(f"A user named '{username}' already exists.", field="username")
    password_check(password, user=User(username=username, email=email))
    user = User.objects.create_user(username=username, email=email, password=password)
    for role in role_names:
        user.groups.add(_role_group(role))
    audit.record(
        action="user.created",
        actor=actor,
        target=user,
        changes={"username": [None, username], "email": [None, email], "roles": [[], user_roles(user)]},
    )
    return user


def _username_check(username: str) -> None:
    """Django's username rule (letters, digits and @.+-_, at most 150), for the page as for the API: no markup."""
    limit = User._meta.get_field("username").max_length
    if len(username) > limit:
        raise ApplicationError(f"A username has at most {limit} characters.", field="username")
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError as error:
        raise ApplicationError(" ".join(error.messages), field="username") from None


@transaction.atomic
def user_update(
    *, actor, user, email: str | None = None, is_active: bool | None = None, role_names: list[str] | None = None
) -> User:
    """Change a person's email, login and roles together: all or nothing. Needs manage_users."""
    require(actor, roles.MANAGE_USERS)
    if email is not None and email != user.email:
        before = user.email
        user.email = email
        user.save(update_fields=["email"])
        audit.record(action="user.updated", actor=actor, target=user, changes={"email": [before, email]})
    if is_active is not None and is_active != user.is_active:
        user_set_active(actor=actor, user=user, active=is_active)
    if role_names is not None:
        roles_set(actor=actor, user=user, role_names=role_names)
    return user


@traced("user.set_active")
@transaction.atomic
def user_set_active(*, actor, user, active: bool) -> None:
    """Disable or re-enable a login. Nobody disables themselves or the last admin."""
    require(actor, roles.MANAGE_USERS)
    if active == user.is_active:
        return
    if not active and user.pk == actor.pk:
        raise ApplicationError("You cannot disable your own account.", field="is_active")
    if not active and roles.ADMIN in user_roles(user):
        others = Group.objects.get(name=roles.ADMIN).user_set.filter(is_active=True).exclude(pk=user.pk)
        if not others.exists():
            raise ApplicationError("This is the last active admin.", field="is_active")
    user.is_active = active
    user.save(update_fields=["is_active"])
    audit.record(
        action="user.enabled" if active else "user.disabled",
        actor=actor,
        target=user,
        changes={"is_active": [not active, active]},
    )


def grant_target(*, target_type: str, target_id: str | None = None, target_name: str | None = None) -> Model:
    """The object a grant names, by id or by name (every grantable kind has a unique name), or a field error.
    Teams only, never a role group, for the team scope."""
    from django.apps import apps

    if target_type not in roles.GRANTABLE:
        raise ApplicationError(f"Nothing can be granted on '{target_type}'.", field="target_type")
    model = apps.get_model(target_type)
    objects = model._default_manager.all()
    if model is Group:
        objects = objects.exclude(name__in=list(roles.ROLES))
    kind = model._meta.verbose_name
    if target_name:
        found = objects.filter(name=target_name).first()
        if found is None:
            raise ApplicationError(f"No {kind} named '{target_name}'.", field="target_name")
        return found
    try:
        return objects.get(pk=target_id)
    except (model.DoesNotExist, ValueError, TypeError):
        raise ApplicationError(f"No {kind} with id {target_id}.", field="target_name") from None


def grant_target_search(*, actor, target_type: str, query: str = "", limit: int = 20) -> list[dict]:
    """Objects of a grantable kind whose name contains `query`, by name (the grant form's searchable list)."""
    require(actor, roles.MANAGE_USERS)
    target_type = target_type if target_type in roles.GRANTABLE else ""
    if not target_type:
        return []
    from django.apps import apps

    model = apps.get_model(target_type)
    objects = model._default_manager.all()
    if model is Group:
        objects = objects.exclude(name__in=list(roles.ROLES))
    if query:
        objects = objects.filter(name__icontains=query)
    return [{"id": pk, "name": name} for pk, name in objects.order_by("name").values_list("pk", "name")[:limit]]
