"""The inference log's way in. Each call's record goes first to a Redis stream, one XADD, so it is kept the moment
the gateway has answered, whatever happens to the gateway next. A flusher then moves the records into the database
in batches, sealed: in one transaction the records, their daily usage, an InferenceBatch holding each record's hash
in position order with the digest of that list, and an audit event (`inference.sealed`) carrying the digest. Only
then are the entries removed from the stream.

So the log costs one audit event per batch, not per call; `manage.py inference_verify` proves no sealed record was
changed or removed; and a flush that died anywhere is simply run again (records whose request id is stored are
not stored twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DataError, transaction
from django.db.models import Max

import audit
from deployments.gateway.models import InferenceBatch, InferenceRecord
from deployments.gateway.sealing import batch_digest, normalise, record_hash
from deployments.gateway.spans import inference_span_attributes, record_span

__all__ = ["flush", "flush_pending", "flusher", "inference_span_attributes", "record_span", "seal", "submit"]

logger = logging.getLogger(__name__)

STREAM = "gateway:records"
FIELD = "record"
REJECTED_STREAM = "gateway:records:rejected"  # entries that are no record at all, kept for a person to look at
LOCK = "gateway:records:flush-lock"
LOCK_SECONDS = 120  # far above one batch's transaction; a flusher that dies holding it blocks others this long
SEALED = "inference.sealed"
ACTOR = "gateway"
BATCH_LABEL = "deployments.inferencebatch"
LOOKUP_CHUNK = 500  # request ids per "already stored?" query (SQLite's parameter limit)
INSERT_ROWS = 1000  # rows per INSERT, whatever GATEWAY_BATCH_MAX is (PostgreSQL takes at most 65535 parameters)
# What the database (or Django preparing a value) answers a value it cannot store with; normalise() should leave none.
STORE_ERRORS = (DataError, ValidationError, ValueError)

_clients: dict[str, redis.Redis] = {}


def _redis() -> redis.Redis:
    url = settings.REDIS_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=10)
    return _clients[url]


async def submit(redis_client: aioredis.Redis, record: dict) -> None:
    """Queue one call's record (the InferenceRecord fields but id/batch_id/position, started_at as ISO-8601 text).
    Kept in Redis once this returns; a flush seals it into the database later. The stream is never trimmed."""
    await redis_client.xadd(STREAM, {FIELD: json.dumps(record, default=str, separators=(",", ":"))})


@dataclass(frozen=True)
class FlushResult:
    taken: int  # stream entries read (and removed)
    sealed: int  # records stored
    batch_id: int | None = None


def flush(max_records: int | None = None) -> int:
    """Seal up to GATEWAY_BATCH_MAX of the oldest queued records into one batch; returns how many were stored.
    One flusher at a time (a Redis lock): a call that finds another one at work returns 0 at once."""
    return flush_once(max_records=max_records).sealed


def flush_pending(*, budget_seconds: float = 30.0, max_records: int | None = None) -> int:
    """Flush batch after batch until the stream is empty (or the time budget is spent); returns records stored."""
    limit = max_records or settings.GATEWAY_BATCH_MAX
    deadline, sealed = time.monotonic() + budget_seconds, 0
    while True:
        result = flush_once(max_records=limit)
        sealed += result.sealed
        if result.taken < limit or time.monotonic() >= deadline:
            return sealed


def flush_once(*, max_records: int | None = None) -> FlushResult:
    client = _redis()
    lock = client.lock(LOCK, timeout=LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        return FlushResult(0, 0)
    try:
        entries = client.xrange(STREAM, count=max_records or settings.GATEWAY_BATCH_MAX)
        if not entries:
            return FlushResult(0, 0)
        queued, rejected = _parse(entries)
        fresh = _not_stored(queued)
        try:
            batch = seal([item.values for item in fresh]) if fresh else None
        except STORE_ERRORS as exc:
            # A record the database refuses must not hold the log back: set it aside, seal the others.
            logger.error("inference log: a batch was refused (%s); looking for the records at fault", exc)
            fresh, refused = _storable(fresh)
            rejected += refused
            batch = seal([item.values for item in fresh]) if fresh else None
        # Only after the commit: a crash before this line leaves the entries queued, and the next flush skips them.
        pipe = client.pipeline(transaction=True)
        for entry_id, raw, reason in rejected:
            pipe.xadd(REJECTED_STREAM, {FIELD: raw, "reason": reason, "entry": entry_id})
        pipe.xdel(STREAM, *[entry_id for entry_id, _fields in entries])
        pipe.execute()
        return FlushResult(len(entries), len(fresh), batch.pk if batch else None)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            logger.warning("inference log: the flush outlived its lock (%s s)", LOCK_SECONDS)


def _received(entry_id: bytes) -> datetime:
    # A stream entry's id starts with Redis' clock in ms: when the gateway queued it.
    return datetime.fromtimestamp(int(entry_id.split(b"-")[0]) / 1000, tz=UTC)


@dataclass(frozen=True)
class _Queued:
    entry_id: bytes
    raw: bytes
    values: dict  # normalised


def _parse(entries: list) -> tuple[list[_Queued], list[tuple[bytes, bytes, str]]]:
    """Normalised records in stream order, first of each request id; entries that hold no record, with why."""
    records, rejected, seen = [], [], set()
    for entry_id, fields in entries:
        raw = fields.get(FIELD.encode(), b"")
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            values = normalise(data, received=_received(entry_id))
        except (ValueError, TypeError, RecursionError) as exc:
            logger.error(
                "inference log: stream entry %s is no record (%s); moved to %s", entry_id, exc, REJECTED_STREAM
            )
            rejected.append((entry_id, raw, str(exc)[:200]))
            continue
        if values["request_id"] not in seen:
            seen.add(values["request_id"])
            records.append(_Queued(entry_id, raw, values))
    return records, rejected


def _not_stored(records: list[_Queued]) -> list[_Queued]:
    ids = [item.values["request_id"] for item in records]
    stored: set[str] = set()
    for start in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[start : start + LOOKUP_CHUNK]
        stored.update(InferenceRecord.objects.filter(request_id__in=chunk).values_list("request_id", flat=True))
    return [item for item in records if item.values["request_id"] not in stored]


class _TrialDone(Exception):
    pass


def _storable(records: list[_Queued]) -> tuple[list[_Queued], list[tuple[bytes, bytes, str]]]:
    """Try each record alone (rolled back): those the database takes, and those it refuses, with why."""
    good, refused = [], []
    for item in records:
        try:
            with transaction.atomic():
                InferenceRecord.objects.bulk_create([InferenceRecord(batch_id=0, position=0, **item.values)])
                raise _TrialDone
        except _TrialDone:
            good.append(item)
        except STORE_ERRORS as exc:
            logger.error("inference log: record %s refused by the database (%s)", item.values["request_id"], exc)
            refused.append((item.entry_id, item.raw, f"refused by the database: {exc}"[:200]))
    return good, refused


@transaction.atomic
def seal(records: list[dict]) -> InferenceBatch:
    """Store normalised records as the next batch, with their usage and the batch's audit event. Batches take
    consecutive ids, so a removed batch leaves a gap; a concurrent flusher that took the same id fails on the
    primary key and its records stay queued."""
    from deployments.gateway.usage import add_usage  # written by the usage module; imported late (it reads models)

    batch_id = (InferenceBatch.objects.aggregate(top=Max("id"))["top"] or 0) + 1
    hashes = [record_hash(values) for values in records]
    digest = batch_digest(hashes)
    InferenceRecord.objects.bulk_create(
        [InferenceRecord(batch_id=batch_id, position=position, **values) for position, values in enumerate(records)],
        batch_size=INSERT_ROWS,
    )
    add_usage(records)
    event = audit.record(
        action=SEALED,
        actor_name=ACTOR,
        target_type=BATCH_LABEL,
        target_id=str(batch_id),
        target_name=f"inference batch {batch_id}",
        detail={
            "batch": batch_id,
            "count": len(records),
            "digest": digest,
            "first_request_id": records[0]["request_id"],
            "last_request_id": records[-1]["request_id"],
        },
    )
    return InferenceBatch.objects.create(
        id=batch_id, count=len(records), hashes=hashes, digest=digest, audit_event_id=event.pk
    )


def pending() -> int:
    """Records queued in the stream, not sealed yet."""
    return int(_redis().xlen(STREAM))


def sealer_command() -> list[str]:
    """The gateway's sealing process: `manage.py inference_seal` with this interpreter, stopping with its parent."""
    manage = str(Path(settings.BASE_DIR) / "manage.py")
    every = str(settings.GATEWAY_FLUSH_SECONDS)
    return [sys.executable, manage, "inference_seal", "--every", every, "--parent", str(os.getpid())]


async def flusher(stop: asyncio.Event, *, env: dict | None = None) -> None:
    """The gateway's background task: keep a sealing process (manage.py inference_seal) running until `stop` is
    set, then stop it and wait for its last flush. It seals every GATEWAY_FLUSH_SECONDS (at once on start, for what
    a previous process left queued). A process of its own: sealing in a thread of the gateway held the interpreter
    lock while tokens waited. One that dies is started again; the records wait in Redis meanwhile."""
    while not stop.is_set():
        process = await asyncio.create_subprocess_exec(*sealer_command(), env=env, stdin=asyncio.subprocess.DEVNULL)
        ended = asyncio.ensure_future(process.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({ended, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if ended.done():
            logger.error("inference log: the sealing process exited with %s; starting another", ended.result())
            await asyncio.sleep(1)
            continue
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(ended), timeout=30)
        except TimeoutError:
            logger.error("inference log: the sealing process did not stop within 30 s; killed")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await ended
