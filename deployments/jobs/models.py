"""Jobs: the source of truth for long work (downloads now; launches, fine-tunes, benchmarks later)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class Job(models.Model):
    """One piece of long work. A worker holds it through a lease it keeps renewing; the reaper hands a
    job whose lease expired to another attempt (capped), so nothing stays "running" after its worker died."""

    class Kind(models.TextChoices):
        DOWNLOAD = "download", _("download")
        IMPORT = "import", _("import")
        DELETE = "delete", _("delete model files")
        SERVE = "serve", _("launch and watch a model server")
        FINETUNE = "finetune", _("fine-tune")
        MERGE = "merge", _("merge an adapter")
        DATASET_STATS = "dataset_stats", _("dataset statistics")
        DATASET_IMPORT = "dataset_import", _("dataset import from the Hub")
        BENCHMARK = "benchmark", _("benchmark a deployment")
        QUANTIZE = "quantize", _("quantize a model")
        EVALUATE = "evaluate", _("evaluate models")
        HEALTH_CHECK = "health_check", _("health check")
        INTEGRITY_SWEEP = "integrity_sweep", _("model-store integrity sweep")
        COPY = "copy", _("copy a model between hosts")

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        RUNNING = "running", _("running")
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed")
        CANCELLED = "cancelled", _("cancelled")

        @classmethod
        def active(cls) -> frozenset[str]:
            return frozenset({cls.PENDING, cls.RUNNING})

        @classmethod
        def terminal(cls) -> frozenset[str]:
            return frozenset({cls.SUCCEEDED, cls.FAILED, cls.CANCELLED})

    kind = models.CharField(_("kind"), max_length=20, choices=Kind.choices)
    status = models.CharField(_("status"), max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    params = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=80, default="celery")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    request_id = models.CharField(max_length=64, blank=True)
    # The W3C traceparent of the request or task that created it: the job runs as a child span of it.
    traceparent = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    cancel_delete_partial = models.BooleanField(default=False)
    progress = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    failure_cause = models.CharField(_("cause"), max_length=60, blank=True)
    failure_detail = models.TextField(_("what happened"), blank=True)
    next_step = models.CharField(_("next step"), max_length=300, blank=True)
    log_seq = models.PositiveIntegerField(default=0)
    # How far a job program's output has been copied into the log (the runtime's cursor), saved with the lines, so
    # an attempt that adopts the running program repeats nothing.
    output_cursor = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        default_permissions = ()
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} job {self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in self.Status.active()

    @property
    def stream(self) -> str:
        return f"job-{self.pk}"


class JobLogLine(models.Model):
    """A numbered line of a job's output (log text, or a progress/metric event as JSON in `data`)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="lines")
    seq = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    stream = models.CharField(max_length=10, default="log")  # log, progress, event
    text = models.TextField(blank=True)
    data = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["job", "seq"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="job_log_unique_seq")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq}"

    def as_item(self) -> dict:
        return {
            "seq": self.seq,
            "time": self.created_at.isoformat() if self.created_at else None,
            "stream": self.stream,
            "text": self.text,
            "data": self.data,
        }
