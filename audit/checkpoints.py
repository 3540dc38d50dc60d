"""Signed checkpoints of the chain's head, written periodically by beat and exportable off-host."""

from __future__ import annotations

from django.db import transaction

from audit import chain
from audit.models import AuditCheckpoint, AuditEvent


@transaction.atomic
def checkpoint_create() -> AuditCheckpoint | None:
    """Sign the current head of the chain; None when the chain is empty or unchanged."""
    chain.lock_chain()
    head = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
    if head is None:
        return None
    last = AuditCheckpoint.objects.order_by("-id").first()
    if last is not None and last.last_event_id == head[0]:
        return None
    created_us = chain.database_now_us()
    count = AuditEvent.objects.count()
    signature = chain.checkpoint_signature(created_us=created_us, last_event_id=head[0], head_hash=head[1], count=count)
    return AuditCheckpoint.objects.create(
        created_us=created_us, last_event_id=head[0], head_hash=head[1], count=count, signature=signature
    )
