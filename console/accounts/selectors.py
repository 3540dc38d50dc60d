"""Reads of the console app; each starts from what the user may see."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import QuerySet

from console import roles
from console.accounts.models import ApiToken, PasswordState
from console.permissions import has_global, require

User = get_user_model()


def token_list(*, user, owner=None) -> QuerySet[ApiToken]:
    """A user's own tokens; a user manager may ask for anyone's (owner=...) or everyone's."""
    tokens = ApiToken.objects.select_related("user")
    if owner is not None and owner.pk != user.pk:
        require(user, roles.MANAGE_USERS)
        return tokens.filter(user=owner)
    if owner is None and has_global(user, roles.MANAGE_USERS):
        return tokens
    return tokens.filter(user=user)


def user_list(*, user) -> QuerySet:
    require(user, roles.MANAGE_USERS)
    return User.objects.prefetch_related("groups").order_by("username")


def grant_list(*, user) -> list[dict]:
    """Every per-object grant (to users and teams) on grantable models."""
    from django.contrib.contenttypes.models import ContentType
    from guardian.models import GroupObjectPermission, UserObjectPermission

    require(user, roles.MANAGE_USERS)
    types = {}
    for label in roles.GRANTABLE:
        app_label, model_name = label.split(".", 1)
        types[ContentType.objects.get_by_natural_key(app_label, model_name).pk] = label
    rows = []
    for model, grantee_field in ((UserObjectPermission, "user"), (GroupObjectPermission, "group")):
        for perm in model.objects.filter(content_type_id__in=types).select_related("permission", grantee_field):
            label = types[perm.content_type_id]
            model_name = label.split(".", 1)[1]
            target = perm.content_object
            rows.append(
                {
                    "user": perm.user.username if grantee_field == "user" else None,
                    "team": perm.group.name if grantee_field == "group" else None,
                    "action": perm.permission.codename.removesuffix(f"_{model_name}"),
                    "target_type": label,
                    "target_id": perm.object_pk,
                    "target_name": str(target) if target is not None else f"#{perm.object_pk} (deleted)",
                }
            )
    return rows


def team_list():
    """Teams: every group that is not a role (roles are granted, teams own things)."""
    return Group.objects.exclude(name__in=list(roles.ROLES)).order_by("name")


def password_change_required(user) -> bool:
    """Whether user still holds a temporary password set by an admin (one query)."""
    return PasswordState.objects.filter(user_id=user.pk, must_change=True).exists()
