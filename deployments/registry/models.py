"""The model registry: where models come from, which repo at which commit, and its copies on hosts."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from console.fields import EncryptedSecretField
from deployments.inventory.models import Host

HUB_ENDPOINT = "https://huggingface.co"


class AllowedEndpoint(models.Model):
    """A host name or network that model sources may reach (mirrors often live on private addresses,
    so this is an allow-list, not a private-IP ban)."""

    pattern = models.CharField(
        _("host or network"),
        max_length=255,
        unique=True,
        help_text=_("A host name (hf-mirror.internal, *.corp.example) or a CIDR (10.8.0.0/16)."),
    )
    note = models.CharField(_("note"), max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pattern"]
        default_permissions = ()

    def __str__(self) -> str:
        return self.pattern


class ModelSource(models.Model):
    """The Hugging Face Hub, a Hub-compatible mirror, ModelScope (or a mirror of it: its endpoint), or local
    directories on the hosts."""

    class Kind(models.TextChoices):
        HUB = "hub", _("Hugging Face Hub")
        MIRROR = "mirror", _("Hub-compatible mirror")
        MODELSCOPE = "modelscope", _("ModelScope")
        LOCAL = "local", _("local directory")

    name = models.CharField(_("name"), max_length=100, unique=True)
    kind = models.CharField(_("kind"), max_length=10, choices=Kind.choices, default=Kind.HUB)
    endpoint = models.URLField(_("endpoint"), blank=True, help_text=_("Empty for the Hub or ModelScope itself."))
    token = EncryptedSecretField(_("access token"), null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        default_permissions = ()

    def __str__(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        """The address requests go to: the source's own endpoint (a mirror), else its kind's default."""
        if self.endpoint:
            return self.endpoint.rstrip("/")
        if self.kind == self.Kind.MODELSCOPE:
            return settings.MODELSCOPE_ENDPOINT.rstrip("/")
        return HUB_ENDPOINT


class ModelRepo(models.Model):
    """A repo pinned to the commit its requested revision resolved to."""

    source = models.ForeignKey(ModelSource, on_delete=models.PROTECT, related_name="repos")
    repo_id = models.CharField(_("repo"), max_length=200)
    requested_revision = models.CharField(_("requested revision"), max_length=100, default="main")
    commit = models.CharField(_("commit"), max_length=64, blank=True)
    gated = models.BooleanField(default=False)
    license = models.CharField(max_length=100, blank=True)
    total_size = models.BigIntegerField(default=0)
    files = models.JSONField(default=list, blank=True)  # [{"path", "size", "sha256", "lfs"}]
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["repo_id", "-created_at"]
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.commit[:10] or self.requested_revision}"


class ModelArtifact(models.Model):
    """A repo at a commit on one host: the files in that host's model store. A fine-tune's output is one too: a LoRA
    adapter (kind adapter, `base` the artifact it was trained on) or a merged full model, with its lineage."""

    class Kind(models.TextChoices):
        MODEL = "model", _("model")
        ADAPTER = "adapter", _("LoRA adapter")

    class Status(models.TextChoices):
        PENDING = "pending", _("queued")
        DOWNLOADING = "downloading", _("downloading")
        READY = "ready", _("ready")
        FAILED = "failed", _("failed")
        CANCELLED = "cancelled", _("cancelled")
        DELETED = "deleted", _("deleted")
        CORRUPT = "corrupt", _("corrupt")

    repo = models.ForeignKey(ModelRepo, on_delete=models.PROTECT, related_name="artifacts")
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="artifacts")
    path = models.CharField(_("path"), max_length=500, blank=True)
    status = models.CharField(_("status"), max_length=12, choices=Status.choices, default=Status.PENDING)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    files_sha256 = models.JSONField(default=dict, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    imported = models.BooleanField(default=False, help_text="Registered from a directory already on the host.")
    kind = models.CharField(_("kind"), max_length=10, choices=Kind.choices, default=Kind.MODEL)
    base = models.ForeignKey(
        "self", verbose_name=_("base model"), null=True, blank=True, on_delete=models.PROTECT, related_name="derived"
    )
    # Where it came from: base repo@commit, dataset version sha256, hyperparameters, code versions, final metrics,
    # training time (a fine-tune), or the adapter merged (a merge). Empty for downloads and imports.
    lineage = models.JSONField(_("lineage"), default=dict, blank=True)
    produced_by = models.ForeignKey(
        "deployments.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    # The health check's integrity sweep: when the files were last re-hashed against files_sha256, and what it found.
    integrity_checked_at = models.DateTimeField(_("integrity checked"), null=True, blank=True)
    integrity_note = models.TextField(_("integrity"), blank=True)

    class Meta:
        ordering = ["-created_at"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["repo", "host"], name="artifact_once_per_host")]

    def __str__(self) -> str:
        return f"{self.repo} on {self.host}"


class ArtifactUse(models.Model):
    """Something that needs an artifact's files (a deployment, a fine-tune); while one exists the
    artifact cannot be deleted."""

    artifact = models.ForeignKey(ModelArtifact, on_delete=models.PROTECT, related_name="uses")
    holder = models.CharField(max_length=120)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["artifact", "holder"], name="artifact_use_once")]

    def __str__(self) -> str:
        return f"{self.holder} uses {self.artifact}"
