"""Reads of the console app; each starts from what the user may see."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.utils.translation import gettext as _

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
            action = perm.permission.codename.removesuffix(f"_{model_name}")
            name = str(target) if target is not None else _("#%(id)s (deleted)") % {"id": perm.object_pk}
            rows.append(
                {
                    "user": perm.user.username if grantee_field == "user" else None,
                    "team": perm.group.name if grantee_field == "group" else None,
                    "action": action,
                    "action_label": str(roles.ACTIONS.get(action, action)),  # the codename in words, for pages
                    "target_type": label,
                    "target_label": str(roles.GRANT_TARGET_LABELS.get(label, label)),
                    "target_id": perm.object_pk,
                    "target_name": name,
                }
            )
    return rows


def team_list():
    """Teams: every group that is not a role (roles are granted, teams own things)."""
    return Group.objects.exclude(name__in=list(roles.ROLES)).order_by("name")


def team_members(*, team) -> QuerySet:
    return team.user_set.order_by("username")


def team_holdings(*, team) -> dict[str, int]:
    """What a team owns, by kind, leaving out kinds it owns none of: rows of every model with a foreign key to
    the team (deployments, credentials, and any later kind such as quotas) and grants to it or on it. Found
    through the model registry, so this layer imports no domain above it."""
    from django.apps import apps
    from django.contrib.contenttypes.models import ContentType
    from guardian.models import GroupObjectPermission, UserObjectPermission

    held: dict[str, int] = {}
    for model in apps.get_models():
        if model._meta.app_label in ("auth", "guardian"):
            continue
        for field in model._meta.get_fields():
            if field.many_to_one and field.concrete and field.related_model is Group:
                count = model._default_manager.filter(**{field.name: team}).count()
                if count:
                    label = str(model._meta.verbose_name if count == 1 else model._meta.verbose_name_plural)
                    held[label] = held.get(label, 0) + count
    on_team = {"content_type": ContentType.objects.get_for_model(Group), "object_pk": str(team.pk)}
    grants = (
        GroupObjectPermission.objects.filter(group=team).count()
        + GroupObjectPermission.objects.filter(**on_team).count()
        + UserObjectPermission.objects.filter(**on_team).count()
    )
    if grants:
        held["grant" if grants == 1 else "grants"] = grants
    return held


def password_change_required(user) -> bool:
    """Whether user still holds a temporary password set by an admin (one query)."""
    return PasswordState.objects.filter(user_id=user.pk, must_change=True).exists()
