"""Every permission question, answered once. Views, API, consumers and tasks call only these.

- `can(user, action, obj=None)`: a yes/no for templates and menus.
- `restrict(queryset, user, action)`: the rows of a list the user may see for that action.
- `require(user, action, obj=None)`: raise PermissionDenied (403), or Http404 for an object the user
  may not even view (no enumeration).
- `require_list(user, action, model)`: may the user list any object of this model for the action.

Rules, in words:
- A user holds an action globally when one of their roles (a group named in console.roles.ROLES)
  holds it there. The groups' Django permissions mirror the matrix (sync_roles) for other tools;
  the checks read the matrix itself.
- A user or one of their teams may be granted an action on one object, where roles.GRANTABLE allows it.
- Anonymous and inactive users hold nothing.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import Model, Q, QuerySet
from django.dispatch import Signal
from django.http import Http404
from guardian.shortcuts import get_objects_for_user

from console import roles


class ActionDenied(PermissionDenied):
    """403: the user may see the thing but not do this. Carries what was denied, for the audit log."""

    def __init__(self, user, action: str, obj: Model | None = None, model: type[Model] | None = None) -> None:
        super().__init__(f"Your role does not allow '{action}'.")
        self.user, self.action, self.obj, self.model = user, action, obj, model


class ObjectHidden(Http404):
    """404: the user may not even see this object (no enumeration). Audited like a denial."""

    def __init__(self, user, action: str, obj: Model) -> None:
        super().__init__("Not found.")
        self.user, self.action, self.obj, self.model = user, action, obj, type(obj)


def _active(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active)


def user_roles(user) -> list[str]:
    """The roles a user holds, in the matrix's order."""
    names = set(user.groups.values_list("name", flat=True))
    return [role for role in roles.ROLES if role in names]


def _global_actions(user) -> frozenset[str]:
    """The actions the user's roles hold, read once per user object (one query per request)."""
    cached = getattr(user, "_console_actions", None)
    if cached is None:
        if user.is_superuser:
            cached = frozenset(roles.ACTIONS)
        else:
            names = set(user.groups.values_list("name", flat=True))
            cached = frozenset(action for role, actions in roles.ROLES.items() if role in names for action in actions)
        user._console_actions = cached
    return cached


def _model_label(model: type[Model]) -> str:
    return model._meta.label_lower


def grantable(model: type[Model], action: str) -> bool:
    return action in roles.GRANTABLE.get(_model_label(model), ())


def _object_perm(model: type[Model], action: str) -> str:
    return f"{model._meta.app_label}.{roles.object_codename(action, model._meta.model_name)}"


def has_global(user, action: str) -> bool:
    """True when one of the user's roles holds the action everywhere."""
    if action not in roles.ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return _active(user) and action in _global_actions(user)


def allowed_actions(user) -> list[str]:
    return [action for action in roles.ACTIONS if has_global(user, action)]


def can(user, action: str, obj: Model | None = None) -> bool:
    if has_global(user, action):
        return True
    if obj is None or not _active(user) or not grantable(type(obj), action):
        return False
    return user.has_perm(_object_perm(type(obj), action), obj)


def restrict(queryset: QuerySet, user, action: str) -> QuerySet:
    """The part of queryset on which the user holds action (globally, or by grant on each object)."""
    if has_global(user, action):
        return queryset
    if not _active(user) or not grantable(queryset.model, action):
        return queryset.none()
    return get_objects_for_user(
        user, _object_perm(queryset.model, action), klass=queryset, accept_global_perms=False, with_superuser=False
    )


def require(user, action: str, obj: Model | None = None) -> None:
    """Raise unless the user holds action (on obj, when given). An unseen object is a 404."""
    if can(user, action, obj):
        return
    if obj is not None and (action == roles.VIEW or not can(user, roles.VIEW, obj)):
        raise ObjectHidden(user, action, obj)
    raise ActionDenied(user, action, obj)


def require_owner(user, action: str, obj: Model) -> None:
    """Changing or deleting a team's thing. A user can change or delete an object a team owns when: they hold
    the action (by role or grant) and either manage users (admins), hold the action on that very object by
    grant, or belong to its owning team. A global role alone lets them use it, not change what another team
    owns. Objects no team owns are shared: the action is enough."""
    require(user, action, obj)
    team_id = getattr(obj, "team_id", None)
    if team_id is None or has_global(user, roles.MANAGE_USERS):
        return
    if grantable(type(obj), action) and user.has_perm(_object_perm(type(obj), action), obj):
        return
    if user.groups.filter(pk=team_id).exists():
        return
    raise ActionDenied(user, f"{action} (owned by another team)", obj)


def require_output_reader(user, obj: Model | None, *, model: type[Model] | None = None) -> None:
    """Reading the output of work on an object (a job's log; a server's log carries what its users sent). A user
    can read it when: they may view the object and either manage users (admins), hold view_data (auditors), hold
    any grant on that very object, or belong to its owning team. Objects no team owns are shared: view is enough.
    Work on an object that is gone (`model` says its kind) stays with admins and view_data holders when objects
    of that kind are granted one by one; otherwise view is enough."""
    if obj is None:
        require(user, roles.VIEW)
        if model is None or not roles.GRANTABLE.get(_model_label(model)):
            return
        if has_global(user, roles.MANAGE_USERS) or has_global(user, roles.VIEW_DATA):
            return
        raise ActionDenied(user, "read the log (its target is gone)", model=model)
    require(user, roles.VIEW, obj)
    team_id = getattr(obj, "team_id", None)
    if team_id is None or has_global(user, roles.MANAGE_USERS) or has_global(user, roles.VIEW_DATA):
        return
    granted = roles.GRANTABLE.get(_model_label(type(obj)), ())
    if any(user.has_perm(_object_perm(type(obj), action), obj) for action in granted):
        return
    if user.groups.filter(pk=team_id).exists():
        return
    raise ActionDenied(user, "read the log (owned by another team)", obj)


def restrict_to_team_additions(queryset: QuerySet, user) -> QuerySet:
    """What a user may remove among things people add (model copies): an admin all of them; others what they
    or a teammate added (teams are the non-role groups), and what nobody added (the console's own, shared)."""
    if has_global(user, roles.MANAGE_USERS):
        return queryset
    mates = user.groups.exclude(name__in=list(roles.ROLES)).values_list("user__pk", flat=True)
    return queryset.filter(Q(created_by__isnull=True) | Q(created_by=user) | Q(created_by__in=mates))


def require_team_addition(user, action: str, obj: Model) -> None:
    """Raise unless `obj` is among restrict_to_team_additions for the user (the refusal is audited)."""
    if not restrict_to_team_additions(type(obj).objects.filter(pk=obj.pk), user).exists():
        raise ActionDenied(user, f"{action} (added by another team)", obj)


def require_list(user, action: str, model: type[Model]) -> None:
    """Raise PermissionDenied unless the user may hold action on some objects of model."""
    if has_global(user, action):
        return
    if _active(user) and grantable(model, action):
        return
    raise ActionDenied(user, action, model=model)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def require_token_scope(user, token, method: str) -> None:
    """A read-only API token may read and nothing else. An API token can answer for a user when: its scope
    covers the request (`read`: safe methods only; `write`: everything the user may do)."""
    if getattr(token, "scope", None) == "read" and method.upper() not in SAFE_METHODS:
        raise ActionDenied(user, "write (this API token is read-only)")


# Sent by the outermost handlers (API exception handler, websocket consumers) once the failing work's
# transaction has rolled back; the audit app records it. A signal, so the core never imports the audit.
permission_denied = Signal()  # kwargs: exc, user, path, status


def report_denial(exc: Exception, *, user=None, path: str = "", status: int = 403) -> None:
    """Announce a denial (a console permission exception; others are ignored by the receiver)."""
    permission_denied.send(sender=type(exc), exc=exc, user=user, path=path, status=status)
