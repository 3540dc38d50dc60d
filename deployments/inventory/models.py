"""Inventory: GPU hosts, their GPUs, and memory reservations on them."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Sum
from django.utils.translation import gettext_lazy as _

from deployments.inventory.notes import host_note_display

HOST_NAME = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,62}$", _("Lowercase letters, digits and hyphens (it names the host's queue host.<name>).")
)


class Host(models.Model):
    """A GPU server. Its agent (a Celery worker consuming `host.<name>`) reports GPUs and heartbeats."""

    class Status(models.TextChoices):
        ONLINE = "online", _("online")
        OFFLINE = "offline", _("offline")
        MANUAL = "manual", _("registered by hand")
        MAINTENANCE = "maintenance", _("maintenance")

    class Runtime(models.TextChoices):
        DOCKER = "docker", _("Docker")
        PROCESS = "process", _("process")

    name = models.CharField(_("name"), max_length=63, unique=True, validators=[HOST_NAME])
    address = models.CharField(_("address"), max_length=255, blank=True, help_text=_("Hostname or IP address."))
    labels = models.JSONField(_("labels"), default=dict, blank=True, help_text=_('e.g. {"zone": "rack-2"}'))
    status = models.CharField(_("status"), max_length=12, choices=Status.choices, default=Status.MANUAL)
    agent_version = models.CharField(_("agent version"), max_length=40, blank=True)
    driver_version = models.CharField(_("driver version"), max_length=40, blank=True)
    cuda_version = models.CharField(_("CUDA version"), max_length=20, blank=True)
    last_heartbeat = models.DateTimeField(_("last heartbeat"), null=True, blank=True)
    runtime = models.CharField(_("runtime"), max_length=10, choices=Runtime.choices, default=Runtime.DOCKER)
    model_store = models.CharField(_("model store path"), max_length=255, blank=True)
    # Where the agent's GPU exporter answers (host:port), or a DCGM exporter's URL: what discovery lists.
    metrics_address = models.CharField(_("metrics exporter"), max_length=255, blank=True)
    discovery_note = models.CharField(
        _("discovery note"), max_length=255, blank=True, help_text=_("Why the agent found no GPU, when it found none.")
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        default_permissions = ()

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        return f"host.{self.name}"

    @property
    def discovery_note_display(self) -> str:
        """The agent's note in the reader's language."""
        return host_note_display(self.discovery_note)


class Gpu(models.Model):
    """One GPU of a host, as NVML reports it (or as an admin entered it)."""

    class Health(models.TextChoices):
        OK = "ok", _("healthy")
        DEGRADED = "degraded", _("degraded")
        FAILED = "failed", _("failed")
        MISSING = "missing", _("missing")
        UNKNOWN = "unknown", _("unknown")

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField(_("index"))
    uuid = models.CharField(_("UUID"), max_length=80, blank=True)
    name = models.CharField(_("model"), max_length=100)
    memory_total = models.BigIntegerField(_("memory (bytes)"))
    memory_free = models.BigIntegerField(_("free memory (bytes)"), null=True, blank=True)
    power_limit_w = models.FloatField(_("power limit (W)"), null=True, blank=True)
    compute_capability = models.CharField(_("compute capability"), max_length=10, blank=True)
    nvlink_group = models.CharField(
        _("NVLink/P2P group"),
        max_length=40,
        blank=True,
        help_text=_("GPUs sharing a group talk over NVLink; empty: PCIe only."),
    )
    health = models.CharField(_("health"), max_length=10, choices=Health.choices, default=Health.UNKNOWN)
    # Why the health is what it is (a rule of deployments/inventory/gpu_health.py: e.g. "xid-79", "ecc-uncorrectable")
    health_cause = models.CharField(_("health cause"), max_length=60, blank=True)
    health_detail = models.TextField(_("health detail"), blank=True)
    health_changed_at = models.DateTimeField(_("health since"), null=True, blank=True)
    # The agent's last telemetry reading of this GPU (workers/nvml.GpuTelemetry as a dict) and when it came.
    telemetry = models.JSONField(default=dict, blank=True)
    telemetry_at = models.DateTimeField(null=True, blank=True)
    serial = models.CharField(_("serial"), max_length=40, blank=True)
    discovered = models.BooleanField(_("found by the agent"), default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["host__name", "index"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["host", "index"], name="gpu_unique_index_per_host")]

    def __str__(self) -> str:
        return f"{self.host.name}/gpu{self.index} ({self.name})"

    @property
    def reserved_bytes(self) -> int:
        return self.reservations.aggregate(total=Sum("memory_bytes"))["total"] or 0


class GpuReservation(models.Model):
    """Memory promised on a GPU (by a deployment, later a job): placement counts it as taken."""

    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE, related_name="reservations")
    memory_bytes = models.BigIntegerField()
    holder = models.CharField(max_length=120, help_text="What holds it, e.g. deployment:12")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.holder} on {self.gpu}"
