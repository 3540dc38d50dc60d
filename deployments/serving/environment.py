"""A deployment's environment (development or production) and what the inference log keeps of its calls.

Marking a deployment production takes effect at once: from then on its launch, edits, rollbacks, stops and
deletion wait for another admin (deployments.serving.approvals). Moving it back to development waits too, or
anyone could lift the rule by switching it off first."""

from __future__ import annotations

from django.db import transaction
from django.utils.translation import gettext as _

import audit
from audit.recorder import diff
from audit.telemetry import traced
from console import roles
from console.errors import ApplicationError
from console.permissions import require
from deployments.gateway.cache import invalidate_routes
from deployments.models import ApprovalRequest, Deployment
from deployments.serving import approvals

Environment = Deployment.Environment
Retention = Deployment.PromptRetention


def _checked(value: str | None, choices, field: str) -> str | None:
    if value in (None, ""):
        return None
    if value not in choices.values:
        raise ApplicationError(_("Choose one of: %(values)s.") % {"values": ", ".join(choices.values)}, field=field)
    return value


@traced("deployment.configure")
@transaction.atomic
def deployment_configure(
    *,
    actor,
    deployment: Deployment,
    environment: str | None = None,
    prompt_retention: str | None = None,
    approval: ApprovalRequest | None = None,
) -> Deployment | ApprovalRequest:
    """Set the environment and the prompt retention (None: unchanged). Leaving production files an approval
    request (returned); the retention changes at once either way (it is audited, and only deploy holders may)."""
    require(actor, roles.DEPLOY, deployment)
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    environment = _checked(environment, Environment, "environment")
    prompt_retention = _checked(prompt_retention, Retention, "prompt_retention")
    before = {"environment": deployment.environment, "prompt_retention": deployment.prompt_retention}
    after = {
        "environment": environment or deployment.environment,
        "prompt_retention": prompt_retention or deployment.prompt_retention,
    }
    if before == after:
        raise ApplicationError(_("Nothing changed."))
    request = None
    leaving = before["environment"] == Environment.PRODUCTION and after["environment"] != Environment.PRODUCTION
    if leaving and approvals.required(deployment, approvals.ENVIRONMENT, approval):
        request = approvals.request_approval(
            actor=actor,
            deployment=deployment,
            action=approvals.ENVIRONMENT,
            proposal={"environment": after["environment"]},
            changes={"environment": [before["environment"], after["environment"]]},
        )
        after["environment"] = before["environment"]  # until approved
    changes = diff(before, after)
    if changes:
        Deployment.objects.filter(pk=deployment.pk).update(**after)
        deployment.environment, deployment.prompt_retention = after["environment"], after["prompt_retention"]
        audit.record(action="deployment.configured", actor=actor, target=deployment, changes=changes)
        transaction.on_commit(invalidate_routes)  # the gateway reads both with the route
    return request or deployment
