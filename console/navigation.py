"""The navigation, as data: each entry shows only to users who hold its action, the action its page requires."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from console import roles
from console.permissions import can, may_open_inference_keys, may_read_inference_log


@dataclass(frozen=True)
class NavItem:
    key: str
    label: str
    url_name: str
    action: str
    # A page opened by a rule of its own (a function of console.permissions taking the user), not by one action.
    allowed: Callable[[object], bool] | None = None


NAVIGATION: tuple[NavItem, ...] = (
    NavItem("dashboard", _("Dashboard"), "dashboard", roles.VIEW),
    NavItem("fleet", _("Fleet"), "fleet", roles.VIEW),
    NavItem("inventory", _("Inventory"), "hosts", roles.VIEW),
    NavItem("models", _("Models"), "models", roles.VIEW),
    NavItem("deployments", _("Deployments"), "deployments", roles.VIEW),
    NavItem("approvals", _("Approvals"), "approvals", roles.VIEW),  # a count of requests awaiting the user
    NavItem("keys", _("Inference keys"), "inference-keys", roles.USE_DEPLOYMENT, allowed=may_open_inference_keys),
    NavItem("inference", _("Inference log"), "inference-log", roles.VIEW_DATA, allowed=may_read_inference_log),
    NavItem("jobs", _("Jobs"), "jobs", roles.VIEW),
    NavItem("datasets", _("Datasets"), "datasets", roles.VIEW),
    NavItem("finetune", _("Fine-tune"), "finetunes", roles.FINETUNE),
    NavItem("quality", _("Quantize & evaluate"), "quality", roles.FINETUNE),
    NavItem("benchmarks", _("Benchmarks"), "benchmarks:list", roles.VIEW),
    NavItem("usage", _("Usage"), "usage", roles.VIEW),
    NavItem("health", _("Health checks"), "health-checks", roles.VIEW),
    # The same action as each page's view (ConsoleViewMixin.permission_action): a page a role may open is in its
    # menu (the credentials list is read-only without add_model, e.g. for auditors).
    NavItem("credentials", _("Credentials"), "credentials", roles.VIEW),
    NavItem("audit", _("Audit log"), "audit-events", roles.VIEW_DATA),
    NavItem("access", _("Users & access"), "users", roles.MANAGE_USERS),
    NavItem("teams", _("Teams"), "teams", roles.MANAGE_USERS),
    NavItem("api", _("API"), "api:docs", roles.VIEW),
)


def visible_items(user) -> list[dict]:
    return [
        {"key": item.key, "label": item.label, "url": reverse(item.url_name)}
        for item in NAVIGATION
        if (item.allowed(user) if item.allowed else can(user, item.action))
    ]
