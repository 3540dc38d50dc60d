"""Reads of the audit log. Each starts with the permission check: only view_data may read it."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from django.core.exceptions import ValidationError
from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from audit.filters import AuditFilterForm
from audit.incremental import view_verification
from audit.models import AuditCheckpoint, AuditEvent
from console import roles
from console.permissions import can, require

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(value: datetime) -> int:
    """Microseconds since the epoch (UTC) of an aware datetime (naive: the current time zone)."""
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return (value - EPOCH) // timedelta(microseconds=1)


def _time_bound(filters: dict, name: str) -> int | None:
    """since/until as created_us; accepts a datetime, a date or the text the filter form accepts."""
    value = filters.get(name)
    if value in (None, ""):
        return None
    if isinstance(value, str):
        form = AuditFilterForm({name: value})
        if not form.is_valid() and name in form.errors:
            raise ValidationError({name: form.errors[name]})
        value = form.cleaned_data[name]
    elif isinstance(value, date) and not isinstance(value, datetime):
        day = timezone.make_aware(datetime.combine(value, time.min))
        value = day + timedelta(days=1) - timedelta(microseconds=1) if name == "until" else day
    return to_us(value)


def event_list(*, user, filters: dict | None = None) -> QuerySet[AuditEvent]:
    """Audit events matching the filters (AuditFilterForm's fields), newest first.

    action: exact, or a prefix when it ends with "." ("auth."). actor and q (the target's name):
    case-insensitive substrings. since/until: inclusive bounds on the event time.
    """
    require(user, roles.VIEW_DATA)
    filters = filters or {}
    events = AuditEvent.objects.all()
    if actor := filters.get("actor"):
        events = events.filter(actor_name__icontains=actor)
    if action := filters.get("action"):
        events = events.filter(action__startswith=action) if action.endswith(".") else events.filter(action=action)
    for field in ("target_type", "target_id", "source", "outcome"):
        if value := filters.get(field):
            events = events.filter(**{field: value})
    if (since := _time_bound(filters, "since")) is not None:
        events = events.filter(created_us__gte=since)
    if (until := _time_bound(filters, "until")) is not None:
        events = events.filter(created_us__lte=until)
    if query := filters.get("q"):
        events = events.filter(target_name__icontains=query)
    return events.order_by("-id")


def event_head_id(*, user) -> int:
    """The id of the newest event in the chain (0 when empty)."""
    require(user, roles.VIEW_DATA)
    return AuditEvent.objects.aggregate(head=Max("id"))["head"] or 0


def checkpoint_list(*, user) -> QuerySet[AuditCheckpoint]:
    """Signed checkpoints of the chain's head, newest first."""
    require(user, roles.VIEW_DATA)
    return AuditCheckpoint.objects.order_by("-id")


def verification_status(*, user) -> dict:
    """Is the chain intact? The last checkpoint is checked (signature, head, count), then only the events this
    console has not verified yet (audit/incremental.py: after the remembered head, bounded per view); an edit to an
    older event is the full walk's to find (the periodic task, audit_verify), whose last run is under `walk`."""
    require(user, roles.VIEW_DATA)
    checkpoint = AuditCheckpoint.objects.order_by("-id").first()
    status = view_verification(checkpoint)
    checkpoint_data = None
    if checkpoint is not None:
        # A checkpoint that no longer vouches for the chain is reported at position 0.
        checkpoint_data = {
            **checkpoint.as_dict(),
            "time": checkpoint.created_at.isoformat(),
            "valid": status["broken_position"] != 0,
        }
    walk = status["walk"]
    if walk is not None:
        walk = {**walk, "time": datetime.fromtimestamp(walk["at"], tz=UTC).isoformat()}
    return {**status, "walk": walk, "checkpoint": checkpoint_data}


def target_history(*, user, targets: list, limit: int = 100) -> QuerySet[AuditEvent] | None:
    """The audit events about these objects, newest first; None for users who may not read the audit
    log (they see the current state only)."""
    if not can(user, roles.VIEW_DATA):
        return None
    about = Q(pk__in=[])
    for target in targets:
        about |= Q(target_type=target._meta.label_lower, target_id=str(target.pk))
    return AuditEvent.objects.filter(about).order_by("-id")[:limit]
