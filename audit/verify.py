"""Walking the chain: every event's hash recomputed, every link and position checked.

Detects an edited row (its hash no longer matches), a deleted row (a gap in the positions, or a
broken link), a reordered row (hash and link mismatch at the first moved position), and a rewritten
history (a signed checkpoint that no longer matches the chain).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from pathlib import Path

from django.core.cache import cache
from django.db import connection

from audit import chain
from audit.checkpoints import exported_checkpoints
from audit.models import AuditCheckpoint

BATCH = 20_000


@dataclass
class VerifyResult:
    checked: int
    total: int
    broken_position: int | None = None
    broken_id: int | None = None
    reason: str = ""
    start_id: int = 0

    @property
    def ok(self) -> bool:
        return self.broken_position is None

    def summary(self) -> str:
        if self.ok:
            since = f" after event {self.start_id}" if self.start_id else ""
            return f"{self.checked}/{self.total} events valid{since}"
        return (
            f"chain broken at position {self.broken_position} (event id {self.broken_id}): {self.reason}; "
            f"{self.checked - 1} events before it valid"
        )


def _rows(after_id: int):
    columns = ", ".join(chain.HASHED_COLUMNS) + ", hash"
    sql = f"SELECT {columns} FROM audit_auditevent WHERE id > %s ORDER BY id"  # noqa: S608  (fixed column list)
    cursor = connection.chunked_cursor() if connection.vendor == "postgresql" else connection.cursor()
    with cursor:
        cursor.execute(sql, [after_id])
        while rows := cursor.fetchmany(BATCH):
            yield from rows


def verify_chain(*, after_id: int = 0, after_hash: str = chain.GENESIS) -> VerifyResult:
    """Verify the events after `after_id`, whose predecessor has hash `after_hash`."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_auditevent WHERE id > %s", [after_id])
        total = cursor.fetchone()[0]
    expected_id, prev, position = after_id + 1, after_hash, 0
    payload, sha256 = chain.payload, hashlib.sha256
    for row in _rows(after_id):
        position += 1
        event_id, stored_prev, stored_hash = row[0], row[-2], row[-1]
        reason = ""
        if event_id != expected_id:
            reason = f"events {expected_id}..{event_id - 1} are missing" if event_id > expected_id else "out of order"
        elif stored_prev != prev:
            reason = "link to the previous event does not match (an event before it was removed or moved)"
        elif sha256(payload(row)).hexdigest() != stored_hash:
            reason = "content does not match its hash (the event was edited)"
        if reason:
            return VerifyResult(position, total, position, event_id, reason, after_id)
        expected_id, prev = event_id + 1, stored_hash
    return VerifyResult(position, total, start_id=after_id)


LAST_RESULT_KEY = "audit:last-verification"


def remember(result: VerifyResult) -> VerifyResult:
    """Keep the outcome of a verification the console ran (the cache: Redis), for /metrics to report cheaply."""
    cache.set(LAST_RESULT_KEY, {"ok": result.ok, "at": time.time(), "summary": result.summary()}, timeout=None)
    return result


def last_verification() -> dict | None:
    """{"ok", "at" (epoch seconds), "summary"} of the last verification the console ran, None before the first."""
    return cache.get(LAST_RESULT_KEY)


def checkpoint_valid(checkpoint: AuditCheckpoint | dict) -> bool:
    data = checkpoint.as_dict() if isinstance(checkpoint, AuditCheckpoint) else checkpoint
    expected = chain.checkpoint_signature(
        created_us=data["created_us"],
        last_event_id=data["last_event_id"],
        head_hash=data["head_hash"],
        count=data["count"],
    )
    return hmac.compare_digest(expected, data["signature"])


def checkpoint_problem(checkpoint: AuditCheckpoint | dict) -> str | None:
    """Why a checkpoint no longer vouches for the chain, or None when it does."""
    data = checkpoint.as_dict() if isinstance(checkpoint, AuditCheckpoint) else checkpoint
    if not checkpoint_valid(data):
        return "the checkpoint's signature is invalid (wrong key or an edited checkpoint)"
    with connection.cursor() as cursor:
        cursor.execute("SELECT hash FROM audit_auditevent WHERE id = %s", [data["last_event_id"]])
        row = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM audit_auditevent WHERE id <= %s", [data["last_event_id"]])
        count = cursor.fetchone()[0]
    if row is None or row[0] != data["head_hash"]:
        return "the chain no longer holds the checkpoint's head (history rewritten)"
    if count != data["count"]:
        return f"the checkpoint counted {data['count']} events up to its head, the chain now holds {count}"
    return None


def verify_from_checkpoint(checkpoint: AuditCheckpoint | dict) -> VerifyResult:
    """Verify a checkpoint, then the events after it (older segments may be archived)."""
    data = checkpoint.as_dict() if isinstance(checkpoint, AuditCheckpoint) else checkpoint
    problem = checkpoint_problem(data)
    if problem:
        return VerifyResult(0, 0, 0, data["last_event_id"], problem, data["last_event_id"])
    return verify_chain(after_id=data["last_event_id"], after_hash=data["head_hash"])


def verify_checkpoints() -> str | None:
    """The first stored checkpoint that no longer matches the chain, described; None when all match."""
    for checkpoint in AuditCheckpoint.objects.order_by("id").iterator():
        problem = checkpoint_problem(checkpoint)
        if problem:
            return f"checkpoint {checkpoint.id}: {problem}"
    return None


def verify_exported(directory: str | Path) -> str | None:
    """Check the chain against every checkpoint exported to `directory` (copies the database cannot touch):
    the first one that no longer vouches for it, described; None when all do."""
    found = exported_checkpoints(directory)
    if not found:
        return f"{directory} holds no exported checkpoint"
    for path, data in found:
        problem = checkpoint_problem(data)
        if problem:
            return f"exported checkpoint {data.get('id')} ({path.name}): {problem}"
    return None
