"""Walking the chain: every event's hash recomputed, every link and position checked.

Detects an edited row (its hash no longer matches), a deleted row (a gap in the positions, or a
broken link), a reordered row (hash and link mismatch at the first moved position), and a rewritten
history (a signed checkpoint that no longer matches the chain).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from pathlib import Path

from django.core.cache import cache
from django.db import connection
from django.utils.translation import gettext, gettext_noop

from audit import chain
from audit.checkpoints import exported_checkpoints
from audit.models import AuditCheckpoint

BATCH = 10_000  # events per query: ~5 MB of rows in memory at a time


@dataclass
class VerifyResult:
    checked: int
    total: int
    broken_position: int | None = None
    broken_id: int | None = None
    reason: str = ""
    start_id: int = 0
    # The last event the walk passed and its hash (after_id / after_hash when it passed none): where a later walk
    # may resume (audit/incremental.py).
    head_id: int = 0
    head_hash: str = ""

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


def _select_sql() -> str:
    """id, hash, then the hashed columns as the text chain.payload joins: the database renders the integers
    (decimal, the same digits as str(); a missing actor as ''), so a row hashes without Python per column."""
    if connection.vendor == "postgresql":
        integers = ["id::text", "created_us::text", "coalesce(actor_id::text, '')"]
    else:
        integers = ["CAST(id AS TEXT)", "CAST(created_us AS TEXT)", "coalesce(CAST(actor_id AS TEXT), '')"]
    columns = ", ".join([*integers, *chain.HASHED_COLUMNS[3:]])
    return f"SELECT id, hash, {columns} FROM audit_auditevent e WHERE e.id > %s AND e.id <= %s ORDER BY e.id"  # noqa: S608


def _batches(after_id: int, last_id: int):
    """The events after `after_id` up to `last_id` (events appended meanwhile wait for the next walk) in id
    order, one query per BATCH ids. Pages by id range, not LIMIT: a range of the primary key reads through its
    index whatever the table's statistics say (LIMIT pages without them, after a bulk load, each scanned and
    sorted the whole table), and a page that comes back short holds the first missing event, where the walk
    stops anyway."""
    sql = _select_sql()
    if connection.vendor == "postgresql" and after_id < last_id:
        yield from _pipelined_batches(sql, after_id, last_id)
        return
    while after_id < last_id:
        with connection.cursor() as cursor:
            cursor.execute(sql, [after_id, min(after_id + BATCH, last_id)])
            rows = cursor.fetchall()
        yield rows
        after_id += BATCH


def _pipelined_batches(sql: str, after_id: int, last_id: int):
    """PostgreSQL: each batch's query is sent before the batch before it is hashed (psycopg's pipeline mode:
    execute() returns without waiting), so the server reads and renders the next rows while Python hashes these;
    a sequential walk left the server idle during the hashing and Python idle during the query. A fetch waits
    for every query sent before it, so the next query goes out after this batch's fetch, not before."""
    connection.ensure_connection()
    with connection.connection.pipeline(), connection.cursor() as cursor:
        cursor.execute(sql, [after_id, min(after_id + BATCH, last_id)])
        while after_id < last_id:
            rows = cursor.fetchall()
            after_id += BATCH
            if after_id < last_id:
                cursor.execute(sql, [after_id, min(after_id + BATCH, last_id)])
            yield rows


def _hash_as_stored(event_id: int) -> str | None:
    """The event's hash computed from its columns as chain.payload reads them (the authority whenever the
    database-rendered text disagrees); None where a column the payload needs is missing (NULL)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(chain.HASHED_COLUMNS)} FROM audit_auditevent WHERE id = %s",  # noqa: S608
            [event_id],
        )
        row = cursor.fetchone()
    try:
        return chain.event_hash(row)
    except TypeError:
        return None


# Why a walk stopped: stored and printed (audit_verify, /metrics) in English, shown on pages in the reader's language.
_REASONS = (
    gettext_noop("out of order"),
    gettext_noop("link to the previous event does not match (an event before it was removed or moved)"),
    gettext_noop("content does not match its hash (the event was edited)"),
    gettext_noop("the checkpoint's signature is invalid (wrong key or an edited checkpoint)"),
    gettext_noop("the chain no longer holds the checkpoint's head (history rewritten)"),
)
_MISSING = re.compile(r"events (\d+)\.\.(\d+) are missing")


def reason_text(reason: str) -> str:
    """A walk's reason in the active language."""
    if missing := _MISSING.fullmatch(reason or ""):
        return gettext("events %(first)s..%(last)s are missing") % {"first": missing[1], "last": missing[2]}
    return gettext(reason) if reason in _REASONS else reason


def _mismatch(row, expected_id: int, prev: str) -> str:
    """Why a row the hot loop stopped at breaks the chain, or "" when only the database's rendering differed."""
    event_id = row[0]
    if event_id != expected_id:
        return f"events {expected_id}..{event_id - 1} are missing" if event_id > expected_id else "out of order"
    if row[18] != prev:
        return "link to the previous event does not match (an event before it was removed or moved)"
    if _hash_as_stored(event_id) != row[1]:
        return "content does not match its hash (the event was edited)"
    return ""


def verify_chain(*, after_id: int = 0, after_hash: str = chain.GENESIS, limit: int | None = None) -> VerifyResult:
    """Verify the events after `after_id`, whose predecessor has hash `after_hash`; with `limit`, at most that many
    (total still counts all the events after `after_id`: total - checked were left for a later walk)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), max(id) FROM audit_auditevent WHERE id > %s", [after_id])
        total, last_id = cursor.fetchone()
    if limit is not None and last_id is not None:
        last_id = min(last_id, after_id + limit)
    expected_id, prev = after_id + 1, after_hash
    # The hot loop makes no Python-level call per event, only C calls; a row it cannot pass goes to
    # _mismatch. Ids run consecutively up to there, so an event's position is expected_id - after_id.
    domain, join, sha256 = chain.DOMAIN, "\x00".join, hashlib.sha256
    for rows in _batches(after_id, last_id or after_id):
        for row in rows:
            if row[0] == expected_id and row[18] == prev:
                try:
                    digest = sha256(domain + join(row[2:]).encode()).hexdigest()
                except TypeError:  # a NULL where the schema allows none
                    digest = None
                if digest == row[1]:
                    expected_id, prev = expected_id + 1, digest
                    continue
            reason = _mismatch(row, expected_id, prev)
            if reason:
                position = expected_id - after_id
                return VerifyResult(position, total, position, row[0], reason, after_id)
            expected_id, prev = expected_id + 1, row[1]
    return VerifyResult(expected_id - after_id - 1, total, start_id=after_id, head_id=expected_id - 1, head_hash=prev)


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
