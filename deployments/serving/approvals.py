"""Four eyes on production. Launch, edit (a new spec version), rollback, stop and delete of a production deployment,
and moving it out of production, become an ApprovalRequest instead of acting. Another user who holds deploy on
the deployment approves (the requester's change is applied with the approver's authority) or rejects (nothing
changes). Unanswered requests lapse after APPROVAL_TTL_SECONDS (a beat task, and again when someone decides).

The lifecycle services ask `required()` before they act, so the pages and the API obey the same rule. Marking a
deployment production needs no approval; leaving production does, or the rule could be switched off by anyone.

Rules, in words: a user can decide on an approval request when they hold deploy on its deployment and did not ask
for it themselves (asking and approving are two people's acts)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Case, IntegerField, Model, QuerySet, Value, When
from django.utils import timezone
from django.utils.translation import gettext as _

import audit
from audit.recorder import diff
from audit.telemetry import traced
from console import roles
from console.errors import ApplicationError
from console.permissions import ActionDenied, can, has_global, require, restrict
from deployments.models import ApprovalRequest, Deployment, DeploymentSpec
from deployments.serving.actions import RESTART, allowed_actions
from deployments.serving.planning import verdict
from deployments.serving.specs import SPEC_FIELDS, clean_spec, spec_values

Action = ApprovalRequest.Action
State = ApprovalRequest.State
LAUNCH, EDIT, ROLLBACK, STOP, DELETE, ENVIRONMENT = (
    Action.LAUNCH,
    Action.EDIT,
    Action.ROLLBACK,
    Action.STOP,
    Action.DELETE,
    Action.ENVIRONMENT,
)


class OwnRequest(ActionDenied):
    """403: the user who asked for a change never decides on it (audited as a denial like any other)."""

    def __init__(self, user, request: ApprovalRequest) -> None:
        super().__init__(user, "decide on their own approval request", request)
        self.args = (_("You asked for this change: another admin must approve or reject it."),)


# -- the gate the lifecycle services call ----------------------------------------------------------------------------
def required(deployment: Deployment, action: str, approval: ApprovalRequest | None) -> bool:
    """Whether `action` on `deployment` must wait for an approval. The approved request being applied passes, and
    only for its own deployment and action."""
    if approval is not None:
        if approval.deployment_id != deployment.pk or approval.action != action or approval.state != State.APPROVED:
            raise ApplicationError(_("This approval does not cover this change."))
        return False
    return deployment.environment == Deployment.Environment.PRODUCTION


def plain_spec(values: dict) -> dict:
    """Cleaned spec values as JSON (models as their ids), as spec_values gives a saved spec."""
    return {
        name: value.pk if isinstance(value, Model) else value for name, value in values.items() if name in SPEC_FIELDS
    }


def planner_verdict(values: dict, deployment: Deployment) -> dict:
    """What the planner says of a spec now, for the approver (a spec it cannot size says why)."""
    try:
        return verdict(values, holder=deployment.holder).as_dict()
    except ApplicationError as error:
        return {"fits": False, "reason": error.message}


def current_verdict(deployment: Deployment) -> dict:
    if deployment.spec is None:
        return {}
    try:
        return planner_verdict(clean_spec(spec_values(deployment.spec)), deployment)
    except ApplicationError as error:
        return {"fits": False, "reason": error.message}


def request_approval(
    *,
    actor,
    deployment: Deployment,
    action: str,
    proposal: dict | None = None,
    changes: dict | None = None,
    plan: dict | None = None,
) -> ApprovalRequest:
    """File the request instead of acting (the calling service holds the deployment's row lock and has checked
    that the action is possible now). The approvers see it in their menu's count and on the Approvals page."""
    if action in (EDIT, ROLLBACK) and not changes:
        raise ApplicationError(_("Nothing changed."))
    open_one = ApprovalRequest.objects.filter(deployment=deployment, action=action, state=State.PENDING).first()
    if open_one is not None and not lapse(open_one):
        raise ApplicationError(
            _("Request #%(id)s to %(action)s %(name)s already waits for approval.")
            % {"id": open_one.pk, "action": open_one.get_action_display(), "name": deployment.name}
        )
    now = timezone.now()
    try:
        with transaction.atomic():
            request = ApprovalRequest.objects.create(
                deployment=deployment,
                deployment_name=deployment.name,
                action=action,
                proposal=proposal or {},
                base_version=deployment.spec.version if deployment.spec_id else None,
                diff=changes or {},
                verdict=plan or {},
                requested_by=actor if getattr(actor, "is_authenticated", False) else None,
                requested_at=now,
                expires_at=now + timedelta(seconds=settings.APPROVAL_TTL_SECONDS),
            )
    except IntegrityError:  # another request for the same change was filed a moment ago
        raise ApplicationError(_("A request for this change already waits for approval.")) from None
    audit.record(
        action="approval.requested",
        actor=actor,
        target=request,
        changes=request.diff,
        detail={**_facts(request), "expires_at": request.expires_at.isoformat(), "proposal": request.proposal},
    )
    return request


def request_edit(*, actor, deployment: Deployment, values: dict, note: str, plan: dict) -> ApprovalRequest:
    """An edit of a production deployment: the proposed spec, its diff against the current one, the verdict."""
    proposed = plain_spec(values)
    changes = diff(spec_values(deployment.spec) if deployment.spec else {}, proposed)
    return request_approval(
        actor=actor,
        deployment=deployment,
        action=EDIT,
        proposal={"spec": proposed, "note": note},
        changes=changes,
        plan=plan,
    )


def request_rollback(*, actor, deployment: Deployment, old: DeploymentSpec) -> ApprovalRequest:
    values = clean_spec(spec_values(old))
    return request_approval(
        actor=actor,
        deployment=deployment,
        action=ROLLBACK,
        proposal={"version": old.version},
        changes=diff(spec_values(deployment.spec), plain_spec(values)),
        plan=planner_verdict(values, deployment),
    )


# -- deciding --------------------------------------------------------------------------------------------------------
def _facts(request: ApprovalRequest) -> dict:
    return {
        "request": request.pk,
        "request_action": request.action,
        "deployment": request.deployment_name,
        "deployment_id": request.deployment_id,
    }


def lapse(request: ApprovalRequest) -> bool:
    """Mark a pending request past its expiry as expired (audited); True when it has lapsed."""
    with transaction.atomic():
        locked = ApprovalRequest.objects.select_for_update().get(pk=request.pk)
        if locked.state != State.PENDING or locked.expires_at > timezone.now():
            return locked.state == State.EXPIRED
        locked.state = State.EXPIRED
        locked.save(update_fields=["state"])
        audit.record(action="approval.expired", actor=None, target=locked, detail=_facts(locked))
    request.state = State.EXPIRED
    return True


def approvals_expire() -> int:
    """Beat: lapse every pending request past its expiry; returns how many lapsed."""
    due = ApprovalRequest.objects.filter(state=State.PENDING, expires_at__lte=timezone.now())
    return sum(lapse(request) for request in due)


def _lock_open(actor, request: ApprovalRequest) -> ApprovalRequest:
    """The request locked for one decision: two approvers at once, the second finds it decided."""
    locked = ApprovalRequest.objects.select_for_update(of=("self",)).select_related("deployment").get(pk=request.pk)
    if locked.state != State.PENDING:
        raise ApplicationError(
            _("Request #%(id)s is %(state)s: nothing to decide.")
            % {"id": locked.pk, "state": locked.get_state_display()}
        )
    if locked.requested_by_id is not None and locked.requested_by_id == getattr(actor, "pk", None):
        raise OwnRequest(actor, locked)
    if locked.deployment is not None:
        require(actor, roles.DEPLOY, locked.deployment)
    else:
        require(actor, roles.DEPLOY)  # its deployment is gone: only a global deploy holder closes it
    return locked


def _decide(actor, request: ApprovalRequest, *, state: str, event: str, comment: str) -> ApprovalRequest:
    """Lock the open request and record the decision on it and in the audit log; returns the locked request."""
    request = _lock_open(actor, request)
    request.state, request.decided_by, request.decided_at = state, actor, timezone.now()
    request.comment = comment.strip()
    request.save(update_fields=["state", "decided_by", "decided_at", "comment"])
    audit.record(action=event, actor=actor, target=request, detail={**_facts(request), "comment": comment})
    return request


@traced("approval.approve")
def approve(*, actor, request: ApprovalRequest, comment: str = "") -> ApprovalRequest:
    """Approve and apply: the requester's change, done with the approver's authority. A change that can no longer
    be made (the state moved on, the spec no longer fits) leaves the request failed with the reason."""
    lapse(request)
    return _approve(actor=actor, request=request, comment=comment)


@transaction.atomic
def _approve(*, actor, request: ApprovalRequest, comment: str) -> ApprovalRequest:
    request = _decide(actor, request, state=State.APPROVED, event="approval.approved", comment=comment)
    try:
        with transaction.atomic():
            result = _apply(actor, request)
    except (ApplicationError, PermissionDenied) as error:
        request.state, request.result = State.FAILED, getattr(error, "message", None) or str(error)
        outcome, event = "failure", "approval.failed"
    else:
        request.state, request.result = State.APPLIED, result
        outcome, event = "success", "approval.applied"
    request.save(update_fields=["state", "result"])
    audit.record(
        action=event, actor=actor, target=request, outcome=outcome, detail={**_facts(request), "result": request.result}
    )
    return request


@traced("approval.reject")
def reject(*, actor, request: ApprovalRequest, comment: str) -> ApprovalRequest:
    """Reject: nothing changes; the comment says why."""
    if not comment.strip():
        raise ApplicationError(_("Say why the change is rejected."), field="comment")
    lapse(request)
    return _reject(actor=actor, request=request, comment=comment)


@transaction.atomic
def _reject(*, actor, request: ApprovalRequest, comment: str) -> ApprovalRequest:
    return _decide(actor, request, state=State.REJECTED, event="approval.rejected", comment=comment)


def _apply(actor, request: ApprovalRequest) -> str:
    """Make the requested change; returns what happened, in words. The lifecycle services import this module (for
    the gate), so they are imported here, when a decision is applied."""
    from deployments.serving import services as lifecycle
    from deployments.serving.environment import deployment_configure

    deployment = request.deployment
    if deployment is None:
        raise ApplicationError(_("%(name)s no longer exists.") % {"name": request.deployment_name})
    if request.action in (EDIT, ROLLBACK):
        current = deployment.spec.version if deployment.spec_id else None
        if current != request.base_version:
            raise ApplicationError(
                _("%(name)s is at version %(now)s now, not %(then)s as when asked: ask again.")
                % {"name": deployment.name, "now": current, "then": request.base_version}
            )
    if request.action == EDIT:
        proposal = request.proposal
        spec = lifecycle.spec_update(
            actor=actor, deployment=deployment, spec=proposal["spec"], note=proposal.get("note", ""), approval=request
        )
        return _authored(spec, request) + " " + _relaunch(actor, deployment)
    if request.action == ROLLBACK:
        spec = lifecycle.deployment_rollback(
            actor=actor, deployment=deployment, version=request.proposal["version"], approval=request
        )
        return _authored(spec, request) + " " + _relaunch(actor, deployment)
    if request.action == LAUNCH:
        job = lifecycle.deployment_launch(actor=actor, deployment=deployment, approval=request)
        return _("Launched (job %(job)s).") % {"job": job.pk}
    if request.action == STOP:
        lifecycle.deployment_stop(actor=actor, deployment=deployment, approval=request)
        return _("Stopping.")
    if request.action == DELETE:
        lifecycle.deployment_delete(actor=actor, deployment=deployment, approval=request)
        return _("Deleted.")
    deployment_configure(
        actor=actor, deployment=deployment, environment=request.proposal["environment"], approval=request
    )
    label = Deployment.Environment(request.proposal["environment"]).label
    return _("Moved to %(environment)s.") % {"environment": label}


def _authored(spec: DeploymentSpec, request: ApprovalRequest) -> str:
    """The new version is the requester's, applied on approval: its author and note say so."""
    note = f"{spec.note} (approval #{request.pk})".strip()[:255]
    DeploymentSpec.objects.filter(pk=spec.pk).update(created_by=request.requested_by, note=note)
    return _("Version %(version)s saved.") % {"version": spec.version}


def _relaunch(actor, deployment: Deployment) -> str:
    """A running server takes the new version at once (that is what was approved); a stopped one stays stopped."""
    from deployments.serving import services as lifecycle

    deployment.refresh_from_db()
    if RESTART not in allowed_actions(deployment):
        return _("%(name)s is %(state)s: it runs the new version at its next launch.") % {
            "name": deployment.name,
            "state": deployment.get_state_display(),
        }
    lifecycle.deployment_restart(actor=actor, deployment=deployment)
    return _("%(name)s restarts with it.") % {"name": deployment.name}


# -- reading ---------------------------------------------------------------------------------------------------------
def approval_list(*, user, state: str = "", action: str = "", deployment: str = "") -> QuerySet:
    """Requests on the deployments the user may view, pending first, newest first."""
    visible = restrict(Deployment.objects.all(), user, roles.VIEW).values("pk")
    requests = ApprovalRequest.objects.select_related("requested_by", "decided_by", "deployment")
    if not has_global(user, roles.VIEW):
        requests = requests.filter(deployment__in=visible)
    if state:
        requests = requests.filter(state=state)
    if action:
        requests = requests.filter(action=action)
    if deployment:
        requests = requests.filter(deployment_name__icontains=deployment)
    pending_first = Case(When(state=State.PENDING, then=Value(0)), default=Value(1), output_field=IntegerField())
    return requests.annotate(pending_first=pending_first).order_by("pending_first", "-requested_at", "-id")


def waiting_for(user) -> QuerySet:
    """Open requests this user could decide: asked by someone else, on a deployment they may deploy."""
    mine = restrict(Deployment.objects.all(), user, roles.DEPLOY).values("pk")
    return (
        ApprovalRequest.objects.filter(state=State.PENDING, expires_at__gt=timezone.now(), deployment__in=mine)
        .exclude(requested_by=user)
        .select_related("deployment")
    )


def may_decide(user, request: ApprovalRequest) -> bool:
    """Whether the page offers Approve and Reject (the service decides again)."""
    return (
        request.is_open
        and request.requested_by_id != user.pk
        and (can(user, roles.DEPLOY, request.deployment) if request.deployment_id else can(user, roles.DEPLOY))
    )


def requested_message(request: ApprovalRequest) -> str:
    """What the pages tell the requester instead of "done"."""
    return _(
        "%(name)s is a production deployment: request #%(id)s (%(action)s) waits for another admin's approval."
    ) % {"name": request.deployment_name, "id": request.pk, "action": request.get_action_display()}
