"""Console-wide records: the capability permissions, API tokens and stored secrets."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from console import roles
from console.fields import EncryptedSecretField

TOKEN_PREFIX = "lld_"  # noqa: S105  (a marker that makes leaked tokens greppable, not a secret)


class Capability(models.Model):
    """No rows: its permissions are the global actions of console.roles, held by the role groups."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [(action, action.replace("_", " ")) for action in roles.ACTIONS]

    def __str__(self) -> str:
        return "capability"


def hash_token(raw: str) -> str:
    """API tokens carry 256 random bits, so a plain SHA-256 is a safe one-way store."""
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def usable(self) -> ApiTokenQuerySet:
        now = timezone.now()
        unexpired = models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        return self.filter(revoked_at__isnull=True).filter(unexpired)


class ApiToken(models.Model):
    """A personal API token. Only its SHA-256 digest is stored; the value is shown once, at creation. A `read`
    token may only read (safe methods); a `write` token does what its owner may do."""

    class Scope(models.TextChoices):
        READ = "read", _("read only")
        WRITE = "write", _("read and write")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(_("name"), max_length=100)
    prefix = models.CharField(_("prefix"), max_length=16, help_text=_("The first characters, to recognise a token."))
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    scope = models.CharField(_("scope"), max_length=5, choices=Scope.choices, default=Scope.WRITE)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate() -> str:
        return TOKEN_PREFIX + secrets.token_urlsafe(32)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

    @classmethod
    def default_expiry(cls):
        return timezone.now() + timedelta(days=settings.API_TOKEN_DEFAULT_DAYS)


class Credential(models.Model):
    """A stored secret such as a Hugging Face token. The value is write-only: no page or API shows it."""

    class Kind(models.TextChoices):
        HF_TOKEN = "hf_token", _("Hugging Face token")
        REGISTRY = "registry", _("Container registry password")
        OTHER = "other", _("Other secret")

    name = models.CharField(_("name"), max_length=100, unique=True)
    kind = models.CharField(_("kind"), max_length=20, choices=Kind.choices, default=Kind.HF_TOKEN)
    value = EncryptedSecretField(_("value"))
    description = models.CharField(_("description"), max_length=255, blank=True)
    team = models.ForeignKey(Group, verbose_name=_("team"), null=True, blank=True, on_delete=models.SET_NULL)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        ordering = ["name"]
        default_permissions = ()
        permissions = roles.object_permissions("console.credential")

    def __str__(self) -> str:
        return self.name


class PasswordState(models.Model):
    """Where a person's password stands: an admin's temporary password must be changed at the next login."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="password_state")
    must_change = models.BooleanField(_("must change password at next login"), default=False)
    changed_at = models.DateTimeField(_("password changed"), null=True, blank=True)
    reset_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        default_permissions = ()

    def __str__(self) -> str:
        return f"password state of {self.user}"


class LoginFailureWindow(models.Model):
    """Failed logins from one client address in the current window, for the audit log: the first failure of a
    window is an event of its own; the next ones are counted here (`unrecorded`) and written as one counted event
    when the window closes, every LOGIN_FAILURE_AUDIT_BATCH failures, or at a success. A mutable tally beside the
    append-only log, so no failure is lost or counted twice."""

    client_ip = models.CharField(max_length=45, unique=True)  # "" when the address is unknown
    opened_at = models.DateTimeField()
    last_at = models.DateTimeField()
    failures = models.PositiveIntegerField(default=0)
    unrecorded = models.PositiveIntegerField(default=0)
    refused = models.PositiveIntegerField(default=0)  # of `unrecorded`: attempts refused by a lock
    usernames = models.JSONField(default=list)  # distinct usernames among `unrecorded`, capped

    class Meta:
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.failures} failed logins from {self.client_ip or '?'}"
