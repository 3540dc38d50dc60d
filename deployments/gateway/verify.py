"""Checking the inference log against its seals: every batch against its digest and the audit event that carries
it, every record against the hash its batch holds at its position.

Detects an edited record (its hash no longer matches), a removed record (a position of its batch is empty), an
added one (a position its batch never sealed, or a batch that does not exist), an edited batch (its hashes no longer
match its digest, or the digest no longer matches the audit event) and a removed batch (a gap in the batch ids, or a
sealed event whose batch is gone). The audit chain that holds those events is proven by `audit_verify`. Records
still queued in Redis are not sealed yet, and not checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from audit.models import AuditEvent
from deployments.gateway.models import InferenceBatch, InferenceRecord
from deployments.gateway.records import SEALED
from deployments.gateway.sealing import PLACE_FIELDS, RECORD_FIELDS, batch_digest, record_hash

BATCH_CHUNK = 200
RECORD_CHUNK = 2000


@dataclass(frozen=True)
class Problem:
    reason: str
    batch_id: int | None = None
    position: int | None = None
    record_id: int | None = None
    request_id: str = ""

    def describe(self) -> str:
        where = []
        if self.batch_id is not None:
            where.append(f"batch {self.batch_id}")
        if self.position is not None:
            where.append(f"position {self.position}")
        record = [f"record id {self.record_id}"] if self.record_id is not None else []
        if self.request_id:
            record.append(f"request id {self.request_id}")
        named = f" ({', '.join(record)})" if record else ""
        return f"{', '.join(where) or 'inference log'}{named}: {self.reason}"


@dataclass
class InferenceVerifyResult:
    batches: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    limit: int = 1

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def complete(self) -> bool:
        """False when the walk stopped at the limit of problems to name."""
        return len(self.problems) < self.limit

    def summary(self) -> str:
        if self.ok:
            return f"{self.records} inference records in {self.batches} sealed batches valid"
        more = "" if self.complete else f" (stopped after {self.limit}; there may be more)"
        return f"inference log broken at {self.problems[0].describe()}; {len(self.problems)} problem(s) found{more}"


class _Walk:
    """One pass over batches and records together, both in (batch, position) order."""

    def __init__(self, limit: int) -> None:
        self.result = InferenceVerifyResult(limit=max(1, limit))
        self.records = self._records()
        self.current = next(self.records, None)

    @staticmethod
    def _records() -> Iterator[tuple]:
        rows = InferenceRecord.objects.order_by("batch_id", "position").values_list(*PLACE_FIELDS, *RECORD_FIELDS)
        return rows.iterator(chunk_size=RECORD_CHUNK)

    def problem(self, reason: str, **where) -> bool:
        """Note a problem; True when the walk must stop (the limit is reached)."""
        self.result.problems.append(Problem(reason, **where))
        return not self.result.complete

    def advance(self) -> None:
        self.current = next(self.records, None)

    def unsealed_records_before(self, batch_id: int | None) -> bool:
        """Records whose batch_id names no batch, up to `batch_id` (None: all that are left)."""
        while self.current is not None and (batch_id is None or self.current[1] < batch_id):
            record_id, record_batch, position = self.current[:3]
            reason = f"names batch {record_batch}, which was never sealed (the record was added or moved)"
            if self.problem(
                reason, batch_id=record_batch, position=position, record_id=record_id, request_id=self.current[3]
            ):
                return True
            self.advance()
        return False

    def batch_records(self, batch_id: int, hashes: list[str]) -> bool:
        """Check the records of one batch against its hashes; True when the walk must stop."""
        expected = 0
        while self.current is not None and self.current[1] == batch_id:
            record_id, _batch, position = self.current[:3]
            values = dict(zip(RECORD_FIELDS, self.current[3:], strict=True))
            for missing in range(expected, min(position, len(hashes))):
                if self.problem(
                    "no record at this position (the record was removed)", batch_id=batch_id, position=missing
                ):
                    return True
            where = {"batch_id": batch_id, "position": position, "record_id": record_id}
            where["request_id"] = values["request_id"]
            if position >= len(hashes):
                if self.problem("the batch sealed no record at this position (the record was added)", **where):
                    return True
            elif record_hash(values) != hashes[position]:
                if self.problem("content does not match its sealed hash (the record was edited)", **where):
                    return True
            else:
                self.result.records += 1
            expected = max(expected, position + 1)
            self.advance()
        for missing in range(expected, len(hashes)):
            if self.problem("no record at this position (the record was removed)", batch_id=batch_id, position=missing):
                return True
        return False


def _seal_problem(batch: tuple, event: tuple | None) -> str:
    batch_id, count, hashes, digest, event_id = batch
    if len(hashes) != count or batch_digest(hashes) != digest:
        return "its hashes no longer match its digest (the batch was edited)"
    if event is None or event[1] != SEALED:
        return f"audit event {event_id} does not seal it (the batch was edited or added)"
    try:
        detail = json.loads(event[2])
    except ValueError:
        detail = {}
    if (detail.get("batch"), detail.get("count"), detail.get("digest")) != (batch_id, count, digest):
        return f"audit event {event_id} sealed another digest (the batch was edited)"
    return ""


def _batch_chunks() -> Iterator[list[tuple]]:
    after = 0
    while True:
        rows = InferenceBatch.objects.filter(id__gt=after).order_by("id")
        chunk = list(rows.values_list("id", "count", "hashes", "digest", "audit_event_id")[:BATCH_CHUNK])
        if not chunk:
            return
        yield chunk
        after = chunk[-1][0]


def verify_inference_log(*, limit: int = 1) -> InferenceVerifyResult:
    """Walk every sealed batch and record; name up to `limit` problems (the first ones, in batch order)."""
    walk = _Walk(limit)
    expected_batch = 1
    for chunk in _batch_chunks():
        event_ids = [row[4] for row in chunk if row[4] is not None]
        events = {
            row[0]: row for row in AuditEvent.objects.filter(id__in=event_ids).values_list("id", "action", "detail")
        }
        for batch in chunk:
            batch_id, hashes = batch[0], batch[2]
            if walk.unsealed_records_before(batch_id):
                return walk.result
            if batch_id != expected_batch:
                gap = f"batches {expected_batch}..{batch_id - 1} are missing (removed)"
                if walk.problem(gap, batch_id=expected_batch):
                    return walk.result
            expected_batch = batch_id + 1
            seal = _seal_problem(batch, events.get(batch[4]))
            if seal and walk.problem(seal, batch_id=batch_id):
                return walk.result
            walk.result.batches += 1
            if walk.batch_records(batch_id, hashes if isinstance(hashes, list) else []):
                return walk.result
    if walk.unsealed_records_before(None):
        return walk.result
    # The newest batches removed leave no gap; the chain still holds their seals.
    for event_id, detail in AuditEvent.objects.filter(action=SEALED).values_list("id", "detail").iterator():
        try:
            batch_id = int(json.loads(detail).get("batch"))
        except (ValueError, TypeError, AttributeError):
            continue
        missing = batch_id >= expected_batch
        if missing and walk.problem(f"sealed by audit event {event_id} but missing (removed)", batch_id=batch_id):
            return walk.result
    return walk.result
