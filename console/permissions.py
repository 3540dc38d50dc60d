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
from django.db.models import AutoField, BigIntegerField, IntegerField, Model, Q, QuerySet, Subquery
from django.db.models.functions import Cast
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


def global_actions(user) -> frozenset[str]:
    """The actions an active user's roles hold, read now and kept on the user object (API token authentication
    reads them with the token, so a cached token's user asks no more)."""
    return _global_actions(user) if _active(user) else frozenset()


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
    return user.has_perm(_object_perm(type(obj), action), obj) or _in_deploy_scope(user, action, obj)


def restrict(queryset: QuerySet, user, action: str) -> QuerySet:
    """The part of queryset on which the user holds action (globally, or by grant on each object)."""
    if has_global(user, action):
        return queryset
    if not _active(user) or not grantable(queryset.model, action):
        return queryset.none()
    if not isinstance(queryset.model._meta.pk, (AutoField, IntegerField)):
        return get_objects_for_user(
            user, _object_perm(queryset.model, action), klass=queryset, accept_global_perms=False, with_superuser=False
        )
    mine, teams = _granted_pks(user, queryset.model, action)
    return queryset.filter(Q(pk__in=mine) | Q(pk__in=teams))


def granted_count(user, model: type[Model], action: str) -> int | None:
    """How many of model's objects restrict() leaves a user who holds action only by grant, read from the grant
    tables alone: the distinct granted pks, the user's and their teams' (~5 ms for 10k grants, where COUNT(*) over
    restrict() reads the whole table: 19-25 ms at 100k rows; matching each grant to its row costs as much). Exact
    because a grant goes with its object (console/grant_cleanup.py; migration console 0006 and `prune_grants` remove
    what was left before). None when restrict() does not filter by grants."""
    if has_global(user, action) or not _active(user) or not grantable(model, action):
        return None
    if not isinstance(model._meta.pk, (AutoField, IntegerField)):
        return None
    mine, teams = _granted_pks(user, model, action)
    return mine.union(teams).count()


def _granted_pks(user, model: type[Model], action: str) -> tuple[QuerySet, QuerySet]:
    """The pks of model's objects granted to the user, and to a group of theirs, as two subqueries.

    Guardian's own query casts every row's pk to text to compare it with the grant's object_pk, so a list reads the
    whole table and each row's cast; here the grants, few beside the table, are cast to the pk's type. Two
    subqueries joined by OR stay hashed filters, so a page in the list's order walks that order's index and stops
    after a page of granted rows (a UNION would be joined first, every granted row fetched and sorted). The
    permission is looked up in a subquery of its own: joined, the planner takes it for one in 64 grants and plans
    for a handful of rows."""
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType
    from guardian.models import GroupObjectPermission, UserObjectPermission

    kind = ContentType.objects.get_for_model(model)
    codename = roles.object_codename(action, model._meta.model_name)
    permission = Permission.objects.filter(content_type=kind, codename=codename).values("pk")[:1]
    pk = Cast("object_pk", BigIntegerField())
    held = {"content_type": kind, "permission_id": Subquery(permission)}
    mine = UserObjectPermission.objects.filter(user=user, **held).values_list(pk)
    teams = GroupObjectPermission.objects.filter(group__user=user, **held).values_list(pk)
    return mine, teams


def require(user, action: str, obj: Model | None = None) -> None:
    """Raise unless the user holds action (on obj, when given). An unseen object is a 404."""
    if can(user, action, obj):
        return
    if obj is not None and (action == roles.VIEW or not can(user, roles.VIEW, obj)):
        raise ObjectHidden(user, action, obj)
    raise ActionDenied(user, action, obj)


def reachable(queryset: QuerySet, user, action: str, pk) -> Model:
    """The object with this pk among `queryset` (what the user may reach); one outside it raises ObjectHidden for
    `action` (an audited 404, no enumeration), a missing one a plain 404."""
    found = queryset.filter(pk=pk).first()
    if found is not None:
        return found
    hidden = queryset.model._default_manager.filter(pk=pk).first()
    if hidden is not None:
        raise ObjectHidden(user, action, hidden)
    raise Http404


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


# -- the team scopes of `deploy` ---------------------------------------------------------------------------------
DEPLOYMENT_LABEL = "deployments.deployment"
_SCOPE_CODENAMES = {
    roles.object_codename(roles.DEPLOY, "host"): "host",
    roles.object_codename(roles.DEPLOY, "group"): "team",
}


def deploy_scope_allows(user, *, team_id: int | None, host_id: int | None = None, new: bool = False) -> bool:
    """The team scopes of `deploy`, granted to a team by an admin (the role matrix stays the default). A user
    without the deploy role can create, edit, launch, stop, restart and delete a deployment when its owning team is
    one of theirs and that team holds:
    - deploy on the host the deployment is placed on (`host_id`; None while it is not placed: a grant on any host
      is enough, and each launch asks again with the host placement chose), or
    - deploy on every deployment it owns (a grant on the team itself), for deployments that exist (`new` false):
      creating one needs a host grant."""
    from guardian.models import GroupObjectPermission

    if team_id is None or not _active(user):
        return False
    if not user.groups.filter(pk=team_id).exclude(name__in=list(roles.ROLES)).exists():
        return False
    rows = GroupObjectPermission.objects.filter(group_id=team_id, permission__codename__in=list(_SCOPE_CODENAMES))
    scopes = [(_SCOPE_CODENAMES[name], pk) for name, pk in rows.values_list("permission__codename", "object_pk")]
    if not new and ("team", str(team_id)) in scopes:
        return True
    hosts = {pk for kind, pk in scopes if kind == "host"}
    return str(host_id) in hosts if host_id is not None else bool(hosts)


def deploy_scope_teams(user) -> list[int]:
    """The teams of `user` that may create deployments on some host (a host grant of deploy): the teams the deploy
    page offers to someone who deploys by grant, not by role."""
    if not _active(user):
        return []
    return [
        team_id
        for team_id in user.groups.exclude(name__in=list(roles.ROLES)).values_list("pk", flat=True)
        if deploy_scope_allows(user, team_id=team_id, new=True)
    ]


def may_deploy_anywhere(user) -> bool:
    """Whether deploy buttons show: the deploy role, or a team scope of deploy (the services decide again, for the
    team and host)."""
    return can(user, roles.DEPLOY) or bool(deploy_scope_teams(user))


def require_create_deployment(user) -> None:
    """Opening the deploy page: the deploy role, or a team of theirs with a host grant of deploy."""
    if has_global(user, roles.DEPLOY) or deploy_scope_teams(user):
        return
    raise ActionDenied(user, roles.DEPLOY)


def _in_deploy_scope(user, action: str, obj: Model) -> bool:
    # can()'s last question: a deployment within a team scope of deploy (the require() path of pages and API).
    if action != roles.DEPLOY or _model_label(type(obj)) != DEPLOYMENT_LABEL:
        return False
    return deploy_scope_allows(user, team_id=obj.team_id, host_id=obj.host_id)


def require_deploy_scope(user, *, team=None, deployment: Model | None = None, host: Model | None = None) -> None:
    """Creating a deployment for `team`, or placing `deployment` on `host` (each launch, once placement chose).
    Holders of deploy by role, or by grant on that very deployment, pass; others need a team scope
    (deploy_scope_allows). No user: the system relaunching what someone launched."""
    if user is None or has_global(user, roles.DEPLOY):
        return
    if deployment is not None and user.has_perm(_object_perm(type(deployment), roles.DEPLOY), deployment):
        return
    team_id = deployment.team_id if deployment is not None else getattr(team, "pk", None)
    host_id = getattr(host, "pk", None)
    if deploy_scope_allows(user, team_id=team_id, host_id=host_id, new=deployment is None):
        return
    where = f" on host {host}" if host is not None else (" for a team of yours" if team_id is None else "")
    raise ActionDenied(user, f"{roles.DEPLOY}{where}", deployment)


# -- datasets: used without being read ---------------------------------------------------------------------------
DATASET_LABEL = "deployments.dataset"
DATASET_ACTIONS = (roles.VIEW, roles.FINETUNE, roles.VIEW_DATA, roles.MANAGE_DATASETS)


def _teams(user) -> list[int]:
    """The user's teams (groups that are not roles)."""
    return list(user.groups.exclude(name__in=list(roles.ROLES)).values_list("pk", flat=True))


def _steward_teams(user) -> list[int]:
    """The user's teams that hold manage_datasets on themselves (their members steward the team's datasets)."""
    from guardian.models import GroupObjectPermission

    teams = _teams(user)
    codename = roles.object_codename(roles.MANAGE_DATASETS, "group")
    rows = GroupObjectPermission.objects.filter(group_id__in=teams, permission__codename=codename)
    return [int(pk) for group_id, pk in rows.values_list("group_id", "object_pk") if str(group_id) == pk]


def restrict_datasets(queryset: QuerySet, user) -> QuerySet:
    """The datasets a user can see (name, schema, row counts, validation errors by line; never a row). A user can
    see a dataset when: they hold the view role and either hold manage_datasets or view_data by role (admins,
    auditors), belong to its owning team, or hold a grant on it (for them or a team of theirs)."""
    if not has_global(user, roles.VIEW):
        return queryset.none()
    if has_global(user, roles.MANAGE_DATASETS) or has_global(user, roles.VIEW_DATA):
        return queryset
    model = queryset.model
    codenames = [_object_perm(model, action) for action in roles.GRANTABLE[DATASET_LABEL]]
    granted = get_objects_for_user(
        user, codenames, klass=model, any_perm=True, accept_global_perms=False, with_superuser=False
    )
    return queryset.filter(Q(team_id__in=_teams(user)) | Q(pk__in=granted.values("pk")))


def dataset_allows(user, action: str, dataset: Model) -> bool:
    """What a user may do with a dataset they can see (restrict_datasets):
    - view: see it;
    - finetune ("use"): train on it: the finetune role and (manage_datasets by role, its owning team, or a grant of
      finetune or manage_datasets on it), or a grant of finetune on it;
    - view_data: preview its rows: view_data by role (admins, auditors) or a grant of view_data on it. Belonging to
      the owning team is not enough;
    - manage_datasets: add versions and delete: manage_datasets by role (admins), a grant of it on the dataset, or
      membership of its owning team when that team holds manage_datasets on itself (its data stewards)."""
    if action not in DATASET_ACTIONS:
        raise ValueError(f"unknown dataset action {action!r}")
    if not restrict_datasets(type(dataset)._default_manager.filter(pk=dataset.pk), user).exists():
        return False

    def granted(name: str) -> bool:
        return user.has_perm(_object_perm(type(dataset), name), dataset)

    if action == roles.VIEW:
        return True
    if action == roles.VIEW_DATA:
        return has_global(user, roles.VIEW_DATA) or granted(roles.VIEW_DATA)
    manages = has_global(user, roles.MANAGE_DATASETS) or granted(roles.MANAGE_DATASETS)
    manages = manages or dataset.team_id in _steward_teams(user)
    if action == roles.MANAGE_DATASETS:
        return manages
    owned = manages or dataset.team_id in _teams(user)
    return granted(roles.FINETUNE) or (has_global(user, roles.FINETUNE) and owned)


def require_dataset(user, action: str, dataset: Model) -> None:
    """Raise unless dataset_allows: a dataset the user cannot see is a 404 (no enumeration), else a 403."""
    if dataset_allows(user, action, dataset):
        return
    if action == roles.VIEW or not dataset_allows(user, roles.VIEW, dataset):
        raise ObjectHidden(user, action, dataset)
    raise ActionDenied(user, action, dataset)


def dataset_manager_teams(user) -> list[int] | None:
    """The teams for which `user` may add datasets: None for all (manage_datasets by role), else the teams of theirs
    that hold manage_datasets on themselves."""
    if has_global(user, roles.MANAGE_DATASETS):
        return None
    return _steward_teams(user) if _active(user) else []


def require_dataset_manager(user, *, team: Model | None = None) -> None:
    """Adding a dataset (for `team`), or any dataset work at all when no team is named: manage_datasets by role, or
    a team of theirs that stewards its datasets, or (no team named) a grant of manage_datasets on some dataset."""
    teams = dataset_manager_teams(user)
    if teams is None:
        return
    if team is not None:
        if team.pk in teams:
            return
        raise ActionDenied(user, f"{roles.MANAGE_DATASETS} for team {team}")
    if teams or (_active(user) and _holds_any_dataset_grant(user, roles.MANAGE_DATASETS)):
        return
    raise ActionDenied(user, roles.MANAGE_DATASETS)


def _holds_any_dataset_grant(user, action: str) -> bool:
    from django.apps import apps

    model = apps.get_model(DATASET_LABEL)
    return get_objects_for_user(
        user, _object_perm(model, action), klass=model, accept_global_perms=False, with_superuser=False
    ).exists()


# -- the inference gateway: keys, service accounts, team quotas --------------------------------------------------
_TEAM_DEPLOYMENT_ACTIONS = {
    roles.USE_DEPLOYMENT: (roles.USE_DEPLOYMENT, roles.DEPLOY),
    roles.VIEW: (roles.VIEW, roles.USE_DEPLOYMENT, roles.DEPLOY),
}


def restrict_to_team(queryset: QuerySet, team_id: int | None, action: str = roles.USE_DEPLOYMENT) -> QuerySet:
    """The deployments of queryset a team may use or see: what a service account's key reaches (its calls act
    with the team's grants, no person's). A team may use a deployment when it owns it or holds use_deployment or
    deploy on it by grant; it may see one when it may use it or holds view on it by grant."""
    from guardian.models import GroupObjectPermission

    if action not in _TEAM_DEPLOYMENT_ACTIONS:
        raise ValueError(f"a team uses or views a deployment, not {action!r}")
    if team_id is None:
        return queryset.none()
    codenames = [roles.object_codename(name, "deployment") for name in _TEAM_DEPLOYMENT_ACTIONS[action]]
    granted = GroupObjectPermission.objects.filter(
        group_id=team_id,
        permission__codename__in=codenames,
        content_type__app_label="deployments",
        content_type__model="deployment",
    ).values_list("object_pk", flat=True)
    return queryset.filter(Q(team_id=team_id) | Q(pk__in=[int(pk) for pk in granted if pk.isdigit()]))


def team_may_use_deployment(team_id: int | None, deployment: Model) -> bool:
    """Whether a service account of this team may call the deployment (restrict_to_team, use)."""
    if team_id is not None and deployment.team_id == team_id:
        return True
    return restrict_to_team(type(deployment)._default_manager.filter(pk=deployment.pk), team_id).exists()


def team_may_see_deployment(team_id: int | None, deployment: Model) -> bool:
    """Whether a service account of this team may know the deployment exists (restrict_to_team, view)."""
    if team_id is not None and deployment.team_id == team_id:
        return True
    return restrict_to_team(type(deployment)._default_manager.filter(pk=deployment.pk), team_id, roles.VIEW).exists()


def may_use_some_deployment(user) -> bool:
    """use_deployment by role, or by grant on at least one deployment (for the user or a team of theirs)."""
    from django.apps import apps

    if has_global(user, roles.USE_DEPLOYMENT):
        return True
    if not _active(user):
        return False
    # Joined from the grants (none: nothing read), not walked from the deployments as a list's page is.
    model = apps.get_model(DEPLOYMENT_LABEL)
    mine, teams = _granted_pks(user, model, roles.USE_DEPLOYMENT)
    return model._default_manager.filter(pk__in=mine.union(teams)).exists()


def may_manage_service_accounts(user, team_id: int | None = None) -> bool:
    """Service accounts, their keys and team quotas. A user can create and disable a team's service accounts,
    create, change and revoke their keys and set the team's quota when: they manage users (admins), or they belong
    to that team and hold deploy there, by role or by a team scope of deploy (deploy_scope_allows). Without a team:
    whether they may do so for some team (opening the pages)."""
    if not _active(user):
        return False
    if has_global(user, roles.MANAGE_USERS):
        return True
    teams = _teams(user)
    if team_id is not None:
        teams = [team_id] if team_id in teams else []
    return any(has_global(user, roles.DEPLOY) or deploy_scope_allows(user, team_id=team) for team in teams)


def may_open_inference_keys(user) -> bool:
    """The inference keys page: for those who may hold a key (may_use_some_deployment), who still own one (to see
    and revoke it) or who manage service accounts."""
    if not _active(user):
        return False
    return may_use_some_deployment(user) or user.inference_keys.exists() or may_manage_service_accounts(user)


def require_inference_key(user, key: Model) -> None:
    """Changing or revoking an inference key. A user can when: they manage users, the key is their own, or it
    belongs to a service account whose team they manage (may_manage_service_accounts)."""
    if not _active(user):
        raise ActionDenied(user, "manage this inference key", key)
    if has_global(user, roles.MANAGE_USERS) or (key.user_id is not None and key.user_id == user.pk):
        return
    if key.service_account_id is not None and may_manage_service_accounts(user, key.service_account.team_id):
        return
    raise ActionDenied(user, "manage this inference key", key)


# -- the inference gateway: usage --------------------------------------------------------------------------------
def restrict_usage(queryset: QuerySet, user) -> QuerySet:
    """Usage figures and other rows that name the inference key of a call (`key_id`). A user can see them when:
    they hold view and either manage users or hold view_data by role (admins and auditors see all), or the key is
    their own, or it belongs to a service account of one of their teams."""
    from django.apps import apps

    if not has_global(user, roles.VIEW):
        return queryset.none()
    if has_global(user, roles.MANAGE_USERS) or has_global(user, roles.VIEW_DATA):
        return queryset
    keys = apps.get_model("deployments", "InferenceKey")._default_manager
    mine = keys.filter(Q(user=user) | Q(service_account__team_id__in=_teams(user))).values("pk")
    return queryset.filter(key_id__in=mine)


# -- the inference gateway: the inference log --------------------------------------------------------------------
def _deploy_scope_filter(user) -> Q:
    """The deployments within the team scopes of deploy of the user's teams (deploy_scope_allows, as a filter)."""
    from guardian.models import GroupObjectPermission

    rows = GroupObjectPermission.objects.filter(
        group_id__in=_teams(user), permission__codename__in=list(_SCOPE_CODENAMES)
    ).values_list("group_id", "permission__codename", "object_pk")
    match = Q(pk__in=[])
    for team_id, codename, object_pk in rows:
        if _SCOPE_CODENAMES[codename] == "team" and object_pk == str(team_id):
            match |= Q(team_id=team_id)
        elif _SCOPE_CODENAMES[codename] == "host" and object_pk.isdigit():
            match |= Q(team_id=team_id, host_id=int(object_pk)) | Q(team_id=team_id, host_id__isnull=True)
    return match


def restrict_deployable(queryset: QuerySet, user) -> QuerySet:
    """The deployments of queryset the user may deploy: by role, by grant on the deployment (for them or a team of
    theirs), or by a team scope of deploy (deploy_scope_allows)."""
    if has_global(user, roles.DEPLOY):
        return queryset
    if not _active(user):
        return queryset.none()
    granted = restrict(queryset, user, roles.DEPLOY).values("pk")
    return queryset.filter(Q(pk__in=granted) | _deploy_scope_filter(user))


def restrict_inference_log(queryset: QuerySet, user) -> QuerySet:
    """Inference records (rows naming a call's `deployment_id`). A user can read them when: they hold view_data or
    deploy by role (auditors and admins read every record), or they may deploy the record's deployment
    (restrict_deployable: a grant on it, or a team scope of deploy). Only view_data shows the prompts and
    completions kept (inference_text_visible)."""
    from django.apps import apps

    if has_global(user, roles.VIEW_DATA) or has_global(user, roles.DEPLOY):
        return queryset
    if not _active(user):
        return queryset.none()
    deployable = restrict_deployable(apps.get_model(DEPLOYMENT_LABEL).objects.all(), user).values("pk")
    return queryset.filter(deployment_id__in=deployable)


def inference_text_visible(user) -> bool:
    """Prompts and completions in the inference log (kept where a deployment's prompt retention says so): view_data
    holders only (auditors, admins)."""
    return can(user, roles.VIEW_DATA)


def may_read_inference_log(user) -> bool:
    """Opening the inference log: view_data, or deploy by role, grant or team scope on some deployment."""
    from django.apps import apps

    if not _active(user):
        return False
    if has_global(user, roles.VIEW_DATA) or may_deploy_anywhere(user):
        return True
    return restrict_deployable(apps.get_model(DEPLOYMENT_LABEL).objects.all(), user).exists()


def require_inference_log(user) -> None:
    """Raise (403, audited) unless may_read_inference_log."""
    if not may_read_inference_log(user):
        raise ActionDenied(user, "read the inference log")
