"""Four-eyes approval of changes to production deployments: a request waits for another admin's decision."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from deployments.serving.models import Deployment


class ApprovalRequest(models.Model):
    """A launch, edit, rollback, stop, delete or move out of production of a production deployment, asked by one
    user and applied only once another user who holds deploy on it approves (deployments/serving/approvals.py).
    What the approver saw (the spec diff, the planner's verdict) is kept as it was when asked."""

    class Action(models.TextChoices):
        LAUNCH = "launch", _("launch")
        EDIT = "edit", _("edit")
        ROLLBACK = "rollback", _("rollback")
        STOP = "stop", _("stop")
        DELETE = "delete", _("delete")
        ENVIRONMENT = "environment", _("leave production")

    class State(models.TextChoices):
        PENDING = "pending", _("pending")
        APPROVED = "approved", _("approved")  # for the moment it is being applied
        REJECTED = "rejected", _("rejected")
        EXPIRED = "expired", _("expired")
        APPLIED = "applied", _("applied")
        FAILED = "failed", _("failed")

    # SET_NULL: an approved delete removes the deployment, and its requests stay as the record of it.
    deployment = models.ForeignKey(
        Deployment,
        verbose_name=_("deployment"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="approval_requests",
    )
    deployment_name = models.CharField(_("deployment"), max_length=63)
    action = models.CharField(_("action"), max_length=12, choices=Action.choices)
    # edit: {"spec": {field: value}, "note": ...}; rollback: {"version": n}; environment: {"environment": ...}.
    proposal = models.JSONField(_("proposed change"), default=dict, blank=True)
    base_version = models.PositiveIntegerField(_("spec version when asked"), null=True, blank=True)
    diff = models.JSONField(_("spec diff"), default=dict, blank=True)  # {field: [current, proposed]}
    verdict = models.JSONField(_("planner verdict"), default=dict, blank=True)  # Verdict.as_dict() when asked
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("requested by"), null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(_("requested"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires"), db_index=True)
    state = models.CharField(_("state"), max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("decided by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    decided_at = models.DateTimeField(_("decided"), null=True, blank=True)
    comment = models.TextField(_("comment"), blank=True)
    result = models.TextField(_("result"), blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        default_permissions = ()
        constraints = [
            # One open request per deployment and action: a second one would race the first.
            models.UniqueConstraint(
                fields=["deployment", "action"], condition=Q(state="pending"), name="approval_one_pending_per_action"
            )
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.deployment_name}"  # audit target names stay in one language

    @property
    def is_open(self) -> bool:
        """Pending and not yet past its expiry (the beat task may not have marked it yet)."""
        return self.state == self.State.PENDING and self.expires_at > timezone.now()
