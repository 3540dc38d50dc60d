"""Which actions a deployment offers in each state: one table, read by the services (which refuse the rest), the
pages (which show only these buttons) and the API (`actions` on a deployment)."""

from __future__ import annotations

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext_lazy

from console.errors import ApplicationError
from deployments.serving.models import Deployment
from deployments.serving.replica_models import DeploymentReplica

State = Deployment.State
LAUNCH, STOP, RESTART, DELETE = "launch", "stop", "restart", "delete"
ACTION_NAMES = (LAUNCH, RESTART, STOP, DELETE)  # in the order the page shows them
LABELS = {
    LAUNCH: gettext_lazy("launch"),
    STOP: gettext_lazy("stop"),
    RESTART: gettext_lazy("restart"),
    DELETE: gettext_lazy("delete"),
}
# In a context of their own: "stopped" and "deleted" are also state names, which other languages word differently.
DONE = {
    LAUNCH: pgettext_lazy("cannot be …", "launched"),
    STOP: pgettext_lazy("cannot be …", "stopped"),
    RESTART: pgettext_lazy("cannot be …", "restarted"),
    DELETE: pgettext_lazy("cannot be …", "deleted"),
}

ACTIONS: dict[str, tuple[str, ...]] = {
    State.PENDING: (STOP,),
    State.PLACING: (STOP,),
    State.DOWNLOADING: (STOP, RESTART),
    State.STARTING: (STOP, RESTART),
    State.RUNNING: (STOP, RESTART),
    State.STOPPING: (),
    State.STOPPED: (LAUNCH, DELETE),
    State.FAILED: (LAUNCH, DELETE),
}
# A failed deployment waiting for its automatic restart can also be stopped: that cancels the restart.
FAILED_WITH_RESTART_DUE = (LAUNCH, STOP, DELETE)
# Server 0 stopped or failed while other replicas still run: they can be stopped, and nothing is deleted under them.
REPLICAS_HOLDING = (LAUNCH, STOP)


def allowed_actions(deployment: Deployment) -> tuple[str, ...]:
    if deployment.state in (State.STOPPED, State.FAILED) and _replicas_holding(deployment):
        return REPLICAS_HOLDING
    if deployment.state == State.FAILED and deployment.next_restart_at is not None:
        return FAILED_WITH_RESTART_DUE
    return ACTIONS.get(deployment.state, ())


def _replicas_holding(deployment: Deployment) -> bool:
    if deployment.pk is None:
        return False
    prefetched = getattr(deployment, "_prefetched_objects_cache", {}).get("replicas")
    if prefetched is not None:  # the API's list (one query a page)
        return any(replica.state in State.holding() for replica in prefetched)
    return DeploymentReplica.objects.filter(deployment=deployment, state__in=State.holding()).exists()


def require_action(deployment: Deployment, action: str) -> None:
    """Refuse an action the deployment's state does not allow, saying which ones it does."""
    allowed = allowed_actions(deployment)
    if action in allowed:
        return
    facts = {"name": deployment.name, "state": deployment.get_state_display(), "done": DONE[action]}
    if allowed:
        facts["allowed"] = ", ".join(str(LABELS[verb]) for verb in allowed)
        raise ApplicationError(
            _("%(name)s is %(state)s, so it cannot be %(done)s now (possible: %(allowed)s).") % facts
        )
    raise ApplicationError(_("%(name)s is %(state)s, so it cannot be %(done)s until that ends.") % facts)
