"""Writing audit events: one per change, in the change's own transaction, chained under a lock."""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

from django.db import transaction
from django.db.models import Model

from audit import chain, context
from audit.models import AuditEvent
from audit.streams import publish_events
from audit.telemetry import current_trace_id
from console.fields import Secret
from console.permissions import user_roles

logger = logging.getLogger(__name__)
MASK = "********"
# Keys whose values are secrets wherever they appear in a diff or detail.
SECRET_KEYS = frozenset({"value", "password", "token", "secret", "api_key", "hf_token", "raw", "key"})
SYSTEM = "system"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _masked(value: Any, key: str | None = None) -> Any:
    if isinstance(value, Secret) or (key in SECRET_KEYS and value not in (None, "")):
        return MASK
    if isinstance(value, dict):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, Model):
        return str(value)
    return value


def diff(before: dict, after: dict) -> dict[str, list]:
    """{field: [before, after]} for the fields that changed; secret values masked."""
    changed = {}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            changed[key] = [_masked(old, key), _masked(new, key)]
    return changed


def _masked_changes(changes: dict) -> dict:
    """Mask each side of {field: [before, after]} (the pair itself is not a secret)."""
    masked = {}
    for key, pair in changes.items():
        if isinstance(pair, list | tuple) and len(pair) == 2:
            masked[key] = [_masked(pair[0], key), _masked(pair[1], key)]
        else:
            masked[key] = _masked(pair, key)
    return masked


def _normal_ip(value: str | None) -> str:
    if not value:
        return ""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return ""


def _actor_fields(actor) -> tuple[int | None, str, list[str]]:
    if actor is None or not getattr(actor, "is_authenticated", False):
        return None, "", []
    return actor.pk, actor.get_username(), user_roles(actor)


def record(
    *,
    action: str,
    actor=None,
    actor_name: str = "",
    target: Model | None = None,
    target_type: str = "",
    target_id: str = "",
    target_name: str = "",
    changes: dict | None = None,
    detail: dict | None = None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    source: str | None = None,
) -> AuditEvent:
    """Append one event to the chain, inside the caller's transaction (or its own).

    actor: the user who acted, or None with actor_name naming a system identity ("system",
    "worker:<host>", or the username a failed login tried).
    """
    ctx = context.current()
    actor_id, name, roles = _actor_fields(actor)
    if actor_id is None:
        name = actor_name or SYSTEM
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(target.pk)
        target_name = target_name or str(target)
    with transaction.atomic():
        chain.lock_chain()
        last = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
        event = AuditEvent(
            id=(last[0] + 1) if last else 1,
            created_us=chain.database_now_us(),
            actor_id=actor_id,
            actor_name=chain.clean_text(name)[:150],
            actor_roles=canonical_json(roles),
            action=chain.clean_text(action)[:100],
            source=source or ctx.source,
            outcome=outcome,
            target_type=chain.clean_text(target_type)[:100],
            target_id=chain.clean_text(str(target_id))[:64],
            target_name=chain.clean_text(target_name)[:255],
            diff=canonical_json(_masked_changes(changes or {})),
            detail=canonical_json(_masked({**(detail or {}), **_initiator(ctx, actor_id)})),
            client_ip=_normal_ip(ctx.client_ip),
            request_id=chain.clean_text(ctx.request_id)[:64],
            trace_id=ctx.trace_id[:32] or _trace_id(),
            prev_hash=last[1] if last else chain.GENESIS,
        )
        event.hash = chain.event_hash([getattr(event, column) for column in chain.HASHED_COLUMNS])
        event.save(force_insert=True)
        transaction.on_commit(lambda: _publish(event))
    return event


def _initiator(ctx: context.AuditContext, actor_id: int | None) -> dict:
    # Background work names the person whose request started it.
    if ctx.initiator_id and ctx.initiator_id != actor_id:
        return {"initiated_by": ctx.initiator_name, "initiated_by_id": ctx.initiator_id}
    return {}


def _trace_id() -> str:
    return current_trace_id()


def _publish(event: AuditEvent) -> None:
    try:
        publish_events([event])
    except Exception as exc:  # the stream is best effort: browsers backfill from the database
        logger.warning("audit event %s not published live: %s", event.id, exc)
