"""The inference gateway's records: who may call (service accounts, inference keys), how much (team quotas),
what was called (the append-only inference log, sealed in batches whose digests go to the audit chain) and
the daily usage figures drawn from it."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

KEY_PREFIX = "llk_"  # inference keys; API tokens are lld_ (a marker that makes leaked keys greppable)


class QuotaFields(models.Model):
    """Limits shared by keys and teams; empty means no limit at this level."""

    requests_per_minute = models.PositiveIntegerField(_("requests per minute"), null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(_("tokens per minute"), null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(_("tokens per day"), null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def limits(self) -> dict[str, int]:
        """The set limits, by name (rpm, tpm, tpd)."""
        values = {"rpm": self.requests_per_minute, "tpm": self.tokens_per_minute, "tpd": self.tokens_per_day}
        return {name: value for name, value in values.items() if value is not None}


class ServiceAccount(models.Model):
    """A non-human caller owned by a team (an application); its keys act with the team's deployment grants."""

    name = models.SlugField(_("name"), max_length=63, unique=True)
    team = models.ForeignKey(Group, verbose_name=_("owning team"), on_delete=models.PROTECT, related_name="+")
    description = models.CharField(_("description"), max_length=255, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    disabled_at = models.DateTimeField(_("disabled"), null=True, blank=True)

    class Meta:
        ordering = ["name"]
        default_permissions = ()

    def __str__(self) -> str:
        return self.name


def hash_key(raw: str) -> str:
    """Keys carry 256 random bits, so a plain SHA-256 is a safe one-way store (as for API tokens)."""
    return hashlib.sha256(raw.encode()).hexdigest()


class InferenceKeyQuerySet(models.QuerySet):
    def usable(self) -> InferenceKeyQuerySet:
        return self.filter(revoked_at__isnull=True, expires_at__gt=timezone.now())


class InferenceKey(QuotaFields):
    """A key applications send to the gateway (Authorization: Bearer). Only its digest is stored; the value is
    shown once. It belongs to a user or to a service account, expires (capped by INFERENCE_KEY_MAX_DAYS), can be
    revoked, and reaches either the listed deployments or every deployment its owner may use."""

    name = models.CharField(_("name"), max_length=100)
    prefix = models.CharField(_("prefix"), max_length=16, help_text=_("The first characters, to recognise a key."))
    digest = models.CharField(max_length=64, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="inference_keys",
    )
    service_account = models.ForeignKey(
        ServiceAccount,
        verbose_name=_("service account"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="keys",
    )
    # The team whose quota the key's calls count against: the service account's team, or one of its user's teams.
    team = models.ForeignKey(
        Group, verbose_name=_("team"), null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    all_deployments = models.BooleanField(
        _("every deployment the owner may use"),
        default=False,
        help_text=_("Follows the owner's grants as they change; otherwise only the deployments listed."),
    )
    deployments = models.ManyToManyField(
        "deployments.Deployment", verbose_name=_("deployments"), blank=True, related_name="inference_keys"
    )
    allowed_sources = models.JSONField(
        _("allowed source addresses"),
        default=list,
        blank=True,
        help_text=_("Addresses or networks (CIDR) the key may be used from; empty: anywhere."),
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"))
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)

    objects = InferenceKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        default_permissions = ()
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, service_account__isnull=True)
                | Q(user__isnull=True, service_account__isnull=False),
                name="inferencekey_one_owner",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate() -> str:
        return KEY_PREFIX + secrets.token_urlsafe(32)

    @property
    def owner_name(self) -> str:
        if self.service_account_id:
            return f"service:{self.service_account.name}"
        return self.user.get_username() if self.user_id else ""

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()


class TeamQuota(QuotaFields):
    """A team's limits, shared by every key that counts against the team."""

    team = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="inference_quota")
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        default_permissions = ()

    def __str__(self) -> str:
        return f"quota of {self.team}"


class InferenceBatch(models.Model):
    """A sealed run of inference records (append-only). `hashes` lists each record's hash in position order and
    `digest` is the SHA-256 of that list; the digest is written to the audit chain (event `inference.sealed`), so
    a record changed or removed behind the application's back is found at its position."""

    sealed_at = models.DateTimeField(default=timezone.now)
    count = models.PositiveIntegerField()
    hashes = models.JSONField(default=list)
    digest = models.CharField(max_length=64)
    audit_event_id = models.BigIntegerField(null=True)

    class Meta:
        ordering = ["id"]
        default_permissions = ()

    def __str__(self) -> str:
        return f"inference batch {self.pk}"


class InferenceRecord(models.Model):
    """One call through the gateway (append-only). References are plain ids and names, not foreign keys: the
    log outlives what it names, and the database refuses every UPDATE or DELETE on it."""

    request_id = models.CharField(max_length=64, unique=True)
    trace_id = models.CharField(max_length=32, blank=True)
    batch_id = models.BigIntegerField(db_index=True)
    position = models.PositiveIntegerField()
    key_id = models.BigIntegerField(null=True, db_index=True)
    key_prefix = models.CharField(max_length=16, blank=True)
    owner = models.CharField(max_length=160, blank=True)  # username, or service:<name>
    team_id = models.BigIntegerField(null=True, db_index=True)
    deployment_id = models.BigIntegerField(null=True, db_index=True)
    deployment_name = models.CharField(max_length=63, blank=True)
    adapter = models.CharField(max_length=100, blank=True)
    route = models.CharField(max_length=40)  # openai.chat, openai.completions, tgi.generate, tgi.generate_stream
    stream = models.BooleanField(default=False)
    started_at = models.DateTimeField(db_index=True)
    status = models.PositiveSmallIntegerField()
    error = models.CharField(max_length=300, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    ttft_ms = models.FloatField(null=True)
    duration_ms = models.FloatField(default=0)
    client_ip = models.GenericIPAddressField(null=True)
    replica = models.CharField(max_length=200, blank=True)
    # Kept only where the deployment's prompt retention says so; shown only to view_data.
    prompt = models.JSONField(null=True)
    completion = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["batch_id", "position"], name="inference_record_position")]

    def __str__(self) -> str:
        return f"{self.route} {self.request_id}"


class UsageDay(models.Model):
    """Usage per key, team, deployment, adapter and day, added to in batches (never one row per token).
    `latency_histogram` counts calls per upper bound of LATENCY_BOUNDS_MS (plus one overflow slot), so
    percentiles can be read back for any filter by adding histograms."""

    day = models.DateField(db_index=True)
    # 0, not NULL, for "none", so the unique constraint holds on every database.
    key_id = models.BigIntegerField(default=0, db_index=True)
    team_id = models.BigIntegerField(default=0, db_index=True)
    deployment_id = models.BigIntegerField(default=0, db_index=True)
    adapter = models.CharField(max_length=100, blank=True)
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    latency_histogram = models.JSONField(default=list)

    class Meta:
        ordering = ["-day"]
        default_permissions = ()
        constraints = [
            models.UniqueConstraint(
                fields=["day", "key_id", "team_id", "deployment_id", "adapter"], name="usage_day_unique"
            )
        ]

    def __str__(self) -> str:
        return f"usage {self.day}"
