"""The access matrix, as data. Every permission question is answered by console.permissions from this.

An action is a verb a role may hold globally (through its group's permissions) or that a user or
team may be granted on one object (through django-guardian), where GRANTABLE allows it.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

VIEW = "view"
MANAGE_INVENTORY = "manage_inventory"
ADD_MODEL = "add_model"
DEPLOY = "deploy"
USE_DEPLOYMENT = "use_deployment"
FINETUNE = "finetune"
VIEW_DATA = "view_data"
MANAGE_DATASETS = "manage_datasets"
MANAGE_USERS = "manage_users"

ACTIONS: dict[str, str] = {
    VIEW: _("View inventory, models, deployments, jobs and their logs"),
    MANAGE_INVENTORY: _("Manage hosts and GPUs"),
    ADD_MODEL: _("Register, download, import and delete unused models"),
    DEPLOY: _("Create, edit, launch, stop and delete deployments"),
    USE_DEPLOYMENT: _("Use deployments (playground, benchmark)"),
    FINETUNE: _("Start fine-tune and quantize jobs"),
    VIEW_DATA: _("View dataset contents, prompts, the audit log and its exports"),
    MANAGE_DATASETS: _("Add, version and delete datasets"),
    MANAGE_USERS: _("Manage roles, teams, grants and other users' tokens"),
}

ADMIN = "admin"
ENGINEER = "engineer"
AUDITOR = "auditor"

# Global actions per role. An engineer uses a deployment only where granted on that deployment.
ROLES: dict[str, frozenset[str]] = {
    ADMIN: frozenset(ACTIONS),
    ENGINEER: frozenset({VIEW, ADD_MODEL, FINETUNE}),
    AUDITOR: frozenset({VIEW, VIEW_DATA}),
}
ROLE_LABELS: dict[str, str] = {ADMIN: _("Admin"), ENGINEER: _("Engineer"), AUDITOR: _("Auditor")}

# Actions that can be granted on one object, per model ("app_label.model_name"). The guardian
# permission for action A on model M is codename "A_M" (see object_codename).
GRANTABLE: dict[str, tuple[str, ...]] = {
    "console.credential": (VIEW, ADD_MODEL),
    "deployments.deployment": (VIEW, DEPLOY, USE_DEPLOYMENT),
    # Datasets (console.permissions.dataset_allows): `finetune` is "use" (train on it), `view_data` lets the grantee
    # preview rows, `manage_datasets` makes them its data steward; on a team itself, manage_datasets makes that team's
    # members the stewards of the datasets it owns.
    "deployments.dataset": (FINETUNE, VIEW_DATA, MANAGE_DATASETS),
    # Team scopes of `deploy` (console.permissions.deploy_scope_allows), granted to a team: on a host, its members
    # create and launch their team's deployments there; on the team itself, they run every deployment it owns.
    "deployments.host": (DEPLOY,),
    "auth.group": (DEPLOY, MANAGE_DATASETS),
}
# What each kind of grant target is called in forms and lists.
GRANT_TARGET_LABELS: dict[str, str] = {
    "console.credential": _("Credential"),
    "deployments.deployment": _("Deployment"),
    "deployments.host": _("Host (the grantee team deploys its own deployments there)"),
    "deployments.dataset": _("Dataset"),
    "auth.group": _("Every deployment or dataset a team owns (granted to that team)"),
}

# The model whose permissions carry the global actions (no table; see console.accounts.models.Capability).
CAPABILITY_APP = "console"
CAPABILITY_MODEL = "capability"


def object_codename(action: str, model_name: str) -> str:
    """The guardian permission codename for an action on one object of a model."""
    return f"{action}_{model_name}"


def object_permissions(model_label: str) -> list[tuple[str, str]]:
    """Meta.permissions entries for a grantable model (used by its Meta and by sync_roles)."""
    model_name = model_label.split(".", 1)[1]
    return [(object_codename(action, model_name), f"{action} ({model_name})") for action in GRANTABLE[model_label]]
