"""Audit events (append-only, hash-chained) and signed checkpoints of the chain's head."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from django.db import models
from django.utils.translation import gettext_lazy as _


def us_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


class AuditEvent(models.Model):
    """One thing someone did. Never updated or deleted: database triggers refuse both.

    `id` is the position in the chain, assigned under the chain lock, so ids, chain order and commit
    order agree. JSON-valued columns hold canonical JSON text, hashed exactly as stored.
    """

    class Source(models.TextChoices):
        UI = "ui", _("web UI")
        API = "api", _("API")
        WORKER = "worker", _("worker")
        SYSTEM = "system", _("system")

    class Outcome(models.TextChoices):
        SUCCESS = "success", _("success")
        DENIED = "denied", _("denied")
        FAILURE = "failure", _("failure")

    id = models.BigIntegerField(primary_key=True)
    created_us = models.BigIntegerField(_("time (µs since epoch, database clock)"), db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    actor_name = models.CharField(_("actor"), max_length=150, db_index=True)
    actor_roles = models.TextField(default="[]")
    action = models.CharField(_("action"), max_length=100, db_index=True)
    source = models.CharField(_("source"), max_length=10, choices=Source.choices)
    outcome = models.CharField(_("outcome"), max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    target_type = models.CharField(_("target type"), max_length=100, blank=True, db_index=True)
    target_id = models.CharField(_("target id"), max_length=64, blank=True)
    target_name = models.CharField(_("target"), max_length=255, blank=True)
    diff = models.TextField(default="{}")
    detail = models.TextField(default="{}")
    client_ip = models.CharField(_("client address"), max_length=45, blank=True)
    request_id = models.CharField(_("request id"), max_length=64, blank=True, db_index=True)
    trace_id = models.CharField(_("trace id"), max_length=32, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        default_permissions = ()
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"#{self.id} {self.action} by {self.actor_name}"

    @property
    def created_at(self) -> datetime:
        return us_to_datetime(self.created_us)

    @property
    def roles(self) -> list[str]:
        return json.loads(self.actor_roles)

    @property
    def changes(self) -> dict:
        return json.loads(self.diff)

    @property
    def details(self) -> dict:
        return json.loads(self.detail)

    def as_dict(self) -> dict:
        """The event as exports and live streams show it: roles, diff and detail parsed."""
        return {
            "id": self.id,
            "time": self.created_at.isoformat(),
            "actor": self.actor_name,
            "roles": self.roles,
            "action": self.action,
            "source": self.source,
            "outcome": self.outcome,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "target_name": self.target_name,
            "diff": self.changes,
            "detail": self.details,
            "client_ip": self.client_ip,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


class AuditCheckpoint(models.Model):
    """A signed statement of the chain's head: 'event `last_event_id` has hash `head_hash`, and the
    chain held `count` events'. Exported off-host, it proves later that history was not rewritten."""

    id = models.BigAutoField(primary_key=True)
    created_us = models.BigIntegerField()
    last_event_id = models.BigIntegerField()
    head_hash = models.CharField(max_length=64)
    count = models.BigIntegerField()
    signature = models.CharField(max_length=64)

    class Meta:
        ordering = ["-id"]
        default_permissions = ()

    def __str__(self) -> str:
        return f"checkpoint {self.id} at event {self.last_event_id}"

    @property
    def created_at(self) -> datetime:
        return us_to_datetime(self.created_us)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "created_us": self.created_us,
            "last_event_id": self.last_event_id,
            "head_hash": self.head_hash,
            "count": self.count,
            "signature": self.signature,
        }
