"""A fine-tune's checkpoints: where each one is (the fast tier, the archive, or deleted), its step and size."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class Checkpoint(models.Model):
    """One complete checkpoint of a fine-tune job (its manifest was written last, so it is whole)."""

    class Tier(models.TextChoices):
        FAST = "fast", _("fast disk")
        ARCHIVE = "archive", _("archive")
        DELETED = "deleted", _("deleted")

    job = models.ForeignKey("deployments.Job", on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField(_("step"))
    path = models.CharField(_("path"), max_length=500)
    tier = models.CharField(_("tier"), max_length=10, choices=Tier.choices, default=Tier.FAST)
    size = models.BigIntegerField(_("size"), default=0)
    files = models.PositiveIntegerField(_("files"), default=0)
    metrics = models.JSONField(_("metrics"), default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    moved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "-step"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="checkpoint_once_per_step")]

    def __str__(self) -> str:
        return f"checkpoint-{self.step} of job {self.job_id}"
