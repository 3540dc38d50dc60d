"""What the console keeps of the fleet over time, for its own charts and its health check: GPU telemetry and
deployment serving figures as downsampled samples, and the health check's runs with their reports.

Prometheus (deploy/monitoring) keeps the full-resolution series where an operator runs it; these tables let the
console chart a day at 1 minute and a month at 15 minutes without one (retention: settings.TELEMETRY_MINUTE_DAYS
and TELEMETRY_QUARTER_DAYS).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

MINUTE = 60
QUARTER = 900


class GpuSample(models.Model):
    """One GPU over one interval (`resolution` seconds, starting at `at`): the mean of its readings, except the
    counters (ECC, XID, throttle reasons), which keep the interval's last or worst value."""

    gpu = models.ForeignKey("deployments.Gpu", on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(_("at"))
    resolution = models.PositiveIntegerField(_("resolution (s)"), default=MINUTE)
    readings = models.PositiveIntegerField(default=1)  # how many readings were averaged
    utilization = models.FloatField(_("utilisation (%)"), null=True, blank=True)
    memory_used = models.BigIntegerField(_("memory used (bytes)"), null=True, blank=True)
    memory_total = models.BigIntegerField(_("memory (bytes)"), null=True, blank=True)
    temperature = models.FloatField(_("temperature (°C)"), null=True, blank=True)
    power_w = models.FloatField(_("power (W)"), null=True, blank=True)
    power_limit_w = models.FloatField(_("power limit (W)"), null=True, blank=True)
    sm_clock_mhz = models.FloatField(_("SM clock (MHz)"), null=True, blank=True)
    memory_clock_mhz = models.FloatField(_("memory clock (MHz)"), null=True, blank=True)
    throttle_reasons = models.BigIntegerField(default=0)  # NVML's bitmask, OR-ed over the interval
    ecc_corrected = models.BigIntegerField(null=True, blank=True)  # volatile counts, the interval's last
    ecc_uncorrected = models.BigIntegerField(null=True, blank=True)
    retired_pages_pending = models.BooleanField(default=False)
    remapped_rows_pending = models.BooleanField(default=False)
    xid = models.PositiveIntegerField(null=True, blank=True)  # the interval's last XID error code, if any

    class Meta:
        ordering = ["gpu", "resolution", "at"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["gpu", "resolution", "at"], name="gpu_sample_once_per_interval")]
        # Downsampling and retention scan every GPU's rows of one resolution by age.
        indexes = [models.Index(fields=["resolution", "at"], name="gpu_sample_age")]

    def __str__(self) -> str:
        return f"{self.gpu_id} @ {self.at:%Y-%m-%d %H:%M} /{self.resolution}s"


class DeploymentSample(models.Model):
    """One deployment over one interval: what its callers got through the gateway (requests, errors, tokens,
    latency) and what its server reported (queue)."""

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(_("at"))
    resolution = models.PositiveIntegerField(_("resolution (s)"), default=MINUTE)
    requests = models.PositiveIntegerField(_("requests"), default=0)
    errors = models.PositiveIntegerField(_("errors"), default=0)
    prompt_tokens = models.BigIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.BigIntegerField(_("completion tokens"), default=0)
    tokens_per_s = models.FloatField(_("tokens/s"), null=True, blank=True)
    latency_p50_ms = models.FloatField(_("latency p50 (ms)"), null=True, blank=True)
    latency_p95_ms = models.FloatField(_("latency p95 (ms)"), null=True, blank=True)
    ttft_p50_ms = models.FloatField(_("TTFT p50 (ms)"), null=True, blank=True)
    queue = models.FloatField(_("queue"), null=True, blank=True)  # the server's waiting requests, last read

    class Meta:
        ordering = ["deployment", "resolution", "at"]
        default_permissions = ()
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "resolution", "at"], name="deployment_sample_once_per_interval"
            )
        ]
        indexes = [models.Index(fields=["resolution", "at"], name="deployment_sample_age")]

    def __str__(self) -> str:
        return f"{self.deployment_id} @ {self.at:%Y-%m-%d %H:%M} /{self.resolution}s"


class HealthCheckRun(models.Model):
    """One health check (monthly by default, or asked for): its report and findings. The model-store integrity
    sweep is part of it; `progress` keeps which artifacts and files are done, so a restart resumes the sweep."""

    class State(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")

    class Trigger(models.TextChoices):
        SCHEDULED = "scheduled", _("scheduled")
        MANUAL = "manual", _("on demand")

    state = models.CharField(_("state"), max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    trigger = models.CharField(_("trigger"), max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    job = models.ForeignKey("deployments.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # {"sections": {name: {...}}}: see deployments/monitoring/healthcheck.py for what each section holds.
    report = models.JSONField(_("report"), default=dict, blank=True)
    # [{"severity": "critical"|"warning"|"info", "check": str, "subject": str, "message": str, "next_step": str}]
    findings = models.JSONField(_("findings"), default=list, blank=True)
    findings_count = models.PositiveIntegerField(_("findings"), default=0)
    progress = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        default_permissions = ()

    def __str__(self) -> str:
        return f"health check {self.pk} ({self.state})"
