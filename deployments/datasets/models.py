"""Datasets: a team's training data, its immutable versions (one file each in DATASET_STORE) and the resumable
uploads that become versions. Rows live only in the files; nothing here holds a row's content."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from console import roles

DATASET_NAME = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", _("Letters, digits, dots, hyphens and underscores.")
)


class Format(models.TextChoices):
    JSONL = "jsonl", "JSONL"
    JSON = "json", "JSON"
    CSV = "csv", "CSV"
    PARQUET = "parquet", "Parquet"


class Shape(models.TextChoices):
    CHAT = "chat", _("chat (messages with roles)")
    PROMPT_COMPLETION = "prompt_completion", _("prompt and completion")
    TEXT = "text", _("plain text")


class Dataset(models.Model):
    """Training data a team owns. Engineers of that team (or teams granted it) train on it without reading it."""

    name = models.CharField(_("name"), max_length=100, unique=True, validators=[DATASET_NAME])
    team = models.ForeignKey(Group, verbose_name=_("owning team"), on_delete=models.PROTECT, related_name="+")
    description = models.CharField(_("description"), max_length=500, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        default_permissions = ()
        permissions = roles.object_permissions("deployments.dataset")

    def __str__(self) -> str:
        return self.name


class DatasetVersion(models.Model):
    """One immutable file of a dataset: its sha256, format, record shape, row count, schema and the first
    validation problems by line and field (never a row's content)."""

    class Status(models.TextChoices):
        UPLOADING = "uploading", _("uploading")
        VALIDATING = "validating", _("validating")
        READY = "ready", _("ready")
        FAILED = "failed", _("failed")

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField(_("version"))
    sha256 = models.CharField(_("sha256"), max_length=64)
    size = models.BigIntegerField(_("size"))
    format = models.CharField(_("format"), max_length=10, choices=Format.choices)
    shape = models.CharField(_("record shape"), max_length=20, choices=Shape.choices, blank=True)
    row_count = models.BigIntegerField(_("rows"), null=True, blank=True)
    columns = models.JSONField(_("columns"), default=dict, blank=True)  # {name: type}
    # [{"line": 7, "field": "messages", "message": "..."}]: where and what, never the value.
    validation_errors = models.JSONField(_("validation errors"), default=list, blank=True)
    # Computed by a dataset_stats job in the ML environment: token-length histogram with a model's tokenizer,
    # train/eval split sizes, columns and types as the `datasets` library reads them. Never a row.
    stats = models.JSONField(_("statistics"), default=dict, blank=True)
    status = models.CharField(_("status"), max_length=12, choices=Status.choices, default=Status.READY)
    path = models.CharField(_("path"), max_length=500)  # relative to DATASET_STORE
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["dataset", "-version"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["dataset", "version"], name="dataset_unique_version")]

    def __str__(self) -> str:
        return f"{self.dataset.name} v{self.version}"

    @property
    def choice_label(self) -> str:
        """How a form's choice names this version: the dataset, the version and its size in rows."""
        rows = self.row_count or 0
        return ngettext("%(name)s v%(version)s (%(rows)s row)", "%(name)s v%(version)s (%(rows)s rows)", rows) % {
            "name": self.dataset.name,
            "version": self.version,
            "rows": rows,
        }


class DatasetUpload(models.Model):
    """A resumable chunked upload that becomes a new version when complete.

    The part file (`<DATASET_STORE>/uploads/<id>.part`) is the state: chunks are appended in order at exactly
    `received`, which moves only after a chunk is on disk, so a broken chunk is cut off and sent again. A hash
    object cannot be stored between requests (or processes), so the sha256 is taken in one streaming pass over the
    part file at completion, the same pass that validates it: a resumed upload gets the same digest as an unbroken
    one by construction."""

    class Status(models.TextChoices):
        RECEIVING = "receiving", _("receiving")
        FAILED = "failed", _("failed")
        DONE = "done", _("done")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="uploads")
    filename = models.CharField(_("file name"), max_length=255)
    format = models.CharField(_("format"), max_length=10, choices=Format.choices)
    size = models.BigIntegerField(_("expected size"))
    received = models.BigIntegerField(_("received bytes"), default=0)
    sha256 = models.CharField(_("expected sha256"), max_length=64, blank=True)
    status = models.CharField(_("status"), max_length=12, choices=Status.choices, default=Status.RECEIVING)
    errors = models.JSONField(_("validation errors"), default=list, blank=True)
    version = models.ForeignKey(DatasetVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.filename} ({self.received}/{self.size})"
