"""The audit page's verification: only the events it has not verified yet, bounded per view.

A view resumes at the head the last successful verification reached (its id and hash, kept in the cache): when the
event stored at that id still has that hash, it re-walks that event and the ones after it (at most VIEW_LIMIT per
view), so a view at 1M events costs a few queries. What is older than the remembered head is the full walk's job:
the periodic task (audit.tasks.checkpoint, from the last checkpoint) and `manage.py audit_verify` (from the first
event) record their outcome here, and a break they found is shown on the page until a later walk passes.
"""

from __future__ import annotations

import time
from dataclasses import replace

from django.core.cache import cache

from audit import chain
from audit.models import AuditCheckpoint, AuditEvent
from audit.verify import VerifyResult, checkpoint_problem, remember, verify_chain

VIEW_LIMIT = 10_000  # events one view verifies at most (~60 ms); the rest waits for the periodic task
HEAD_KEY = "audit:verified-head"
WALK_KEY = "audit:last-walk"


def remember_head(result: VerifyResult) -> None:
    """Keep where a successful walk ended, for the next view to resume from."""
    if result.ok and result.head_id:
        cache.set(HEAD_KEY, {"id": result.head_id, "hash": result.head_hash, "at": time.time()}, timeout=None)


def remember_walk(result: VerifyResult, *, source: str) -> VerifyResult:
    """Record a walk of the periodic task or the audit_verify command (`source`): when it ran, from where, and the
    break it found. Also its head (resumable) and the last result /metrics reports."""
    # The broken event's stored hash: its break is shown only while that very row is there (not a break another
    # database, a restored one or a test's, had at the same id).
    found = _stored_hashes([result.broken_id]).get(result.broken_id) if result.broken_position else None
    cache.set(WALK_KEY, {"at": time.time(), "source": source, "broken_hash": found, **_as_dict(result)}, timeout=None)
    remember_head(result)
    return remember(result)


def last_walk() -> dict | None:
    """{"at", "source", "ok", ...} of the last periodic or command walk, None before the first (or Redis away)."""
    return cache.get(WALK_KEY)


def _as_dict(result: VerifyResult) -> dict:
    return {
        "ok": result.ok,
        "checked": result.checked,
        "total": result.total,
        "summary": result.summary(),
        "broken_position": result.broken_position,
        "broken_id": result.broken_id,
        "reason": result.reason,
        "after_id": result.start_id,
    }


def _stored_hashes(ids: list[int]) -> dict[int, str]:
    return dict(AuditEvent.objects.filter(id__in=ids).values_list("id", "hash"))


def _walk_break(walk: dict | None, after_id: int) -> bool:
    """Whether the last full walk found a break this view's walk cannot see (before where it started) that is
    still there: the same row at the broken id."""
    if not walk or walk["ok"] or not walk["broken_position"] or walk["broken_id"] > after_id:
        return False
    return _stored_hashes([walk["broken_id"]]).get(walk["broken_id"]) == walk.get("broken_hash")


def _resume_point(base_id: int, base_hash: str) -> tuple[int, str]:
    """Where this view's walk starts: just before the remembered head when it is past the checkpoint and the event
    at its id still holds its hash (the head itself is re-walked, so an edit to it shows); else the checkpoint."""
    head = cache.get(HEAD_KEY)
    if not head or head["id"] <= base_id:
        return base_id, base_hash
    stored = _stored_hashes([head["id"] - 1, head["id"]])
    before = stored.get(head["id"] - 1, chain.GENESIS if head["id"] == 1 else None)
    if stored.get(head["id"]) != head["hash"] or before is None:
        return base_id, base_hash  # the chain changed under the head: start over from the checkpoint
    return head["id"] - 1, before


def view_verification(checkpoint: AuditCheckpoint | None, *, limit: int | None = None) -> dict:
    """The chain's state for a page view: the checkpoint checked, then the events after the remembered head (at most
    `limit`, default VIEW_LIMIT). Keys: VerifyResult's as a dict, plus `pending` (events left to the periodic task),
    `verified_through` (the newest event known intact) and `walk` (the last full walk, or None)."""
    limit = VIEW_LIMIT if limit is None else limit
    walk = last_walk()
    if checkpoint is not None and (problem := checkpoint_problem(checkpoint)):
        result = VerifyResult(0, 0, 0, checkpoint.last_event_id, problem, checkpoint.last_event_id)
        return {**_as_dict(result), "pending": 0, "verified_through": None, "walk": walk}
    base = (checkpoint.last_event_id, checkpoint.head_hash) if checkpoint is not None else (0, chain.GENESIS)
    after_id, after_hash = _resume_point(*base)
    resumed = after_id != base[0]  # the remembered head is walked again, beside `limit` newer events
    result = verify_chain(after_id=after_id, after_hash=after_hash, limit=limit + resumed)
    if not result.ok and resumed:
        # Name the break by its position from the checkpoint (or the first event), as a walk from there would.
        shift = after_id - base[0]
        result = replace(
            result,
            checked=result.checked + shift,
            total=result.total + shift,
            broken_position=result.broken_position + shift,
            start_id=base[0],
        )
    if result.ok:
        remember_head(result)
        remember(result)
        if _walk_break(walk, after_id):
            # A break the full walk found before where this view started: still the chain's state.
            return {**{k: walk[k] for k in _as_dict(result)}, "pending": 0, "verified_through": None, "walk": walk}
    return {
        **_as_dict(result),
        "pending": result.total - result.checked if result.ok else 0,
        "verified_through": result.head_id if result.ok else None,
        "walk": walk,
    }
