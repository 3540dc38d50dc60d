"""Template context from the deployments domain: the count of approval requests waiting for the signed-in user,
shown on the Approvals menu entry (how approvers learn of a request; console.context_processors cannot ask the
deployments domain)."""

from __future__ import annotations

from deployments.serving.approvals import waiting_for


def approvals_waiting(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"approvals_waiting": 0}
    return {"approvals_waiting": waiting_for(user).count()}
