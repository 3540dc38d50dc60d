"""Streamed exports of the audit log as CSV or JSON Lines, memory flat whatever the size.

Events are read in keyset pages on id (no long-lived cursor) and sent in blocks of rows. Under ASGI
the body is an async iterator, each block read in the request's thread: a sync iterator would make
Django collect the whole export in memory before sending it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import transaction
from django.db.models import QuerySet
from django.http import StreamingHttpResponse

import audit
from audit.filters import filters_as_strings
from audit.models import AuditEvent
from audit.selectors import event_list

FORMATS = ("csv", "jsonl")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
COLUMNS = (
    "id",
    "time",
    "actor",
    "roles",
    "action",
    "source",
    "outcome",
    "target_type",
    "target_id",
    "target_name",
    "diff",
    "detail",
    "client_ip",
    "request_id",
    "trace_id",
    "prev_hash",
    "hash",
)
CHUNK_SIZE = 2000
ROWS_PER_BLOCK = 500
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def event_record(event: AuditEvent) -> dict:
    """One event with the export's keys; roles, diff and detail parsed."""
    return event.as_dict()


def iterate_events(queryset: QuerySet[AuditEvent], chunk_size: int = CHUNK_SIZE) -> Iterator[AuditEvent]:
    """The queryset's events in chain order, read chunk_size at a time (keyset pagination on id)."""
    ordered = queryset.order_by("id")
    last = None
    while True:
        page = ordered if last is None else ordered.filter(id__gt=last)
        chunk = list(page[:chunk_size])
        yield from chunk
        if len(chunk) < chunk_size:
            return
        last = chunk[-1].id


def safe_cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_lines(queryset: QuerySet[AuditEvent]) -> Iterator[str]:
    """A header line, then one line per event; JSON columns as compact JSON text."""
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for event in iterate_events(queryset):
        record = event_record(event)
        record["roles"] = ",".join(record["roles"])
        record["diff"], record["detail"] = event.diff, event.detail
        yield writer.writerow([safe_cell(record[column]) for column in COLUMNS])


def jsonl_lines(queryset: QuerySet[AuditEvent]) -> Iterator[str]:
    for event in iterate_events(queryset):
        yield json.dumps(event_record(event), ensure_ascii=False, sort_keys=False) + "\n"


def _blocks(lines: Iterable[str], size: int = ROWS_PER_BLOCK) -> Iterator[str]:
    block: list[str] = []
    for line in lines:
        block.append(line)
        if len(block) >= size:
            yield "".join(block)
            block = []
    if block:
        yield "".join(block)


async def _async_blocks(blocks: Iterator[str]) -> AsyncIterator[str]:
    end = object()
    read = sync_to_async(next)  # thread-sensitive: the request's own thread and database connection
    while (block := await read(blocks, end)) is not end:
        yield block


def is_asgi(request) -> bool:
    return isinstance(getattr(request, "_request", request), ASGIRequest)


def export_response(queryset: QuerySet[AuditEvent], fmt: str, *, asynchronous: bool = False) -> StreamingHttpResponse:
    """Stream the queryset as `fmt` (csv or jsonl), as an attachment named audit-<UTC time>.<fmt>."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    blocks = _blocks(csv_lines(queryset) if fmt == "csv" else jsonl_lines(queryset))
    response = StreamingHttpResponse(_async_blocks(blocks) if asynchronous else blocks, content_type=CONTENT_TYPES[fmt])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
    response["Cache-Control"] = "no-store"
    return response


def events_export(*, user, filters: dict, fmt: str, asynchronous: bool = False) -> StreamingHttpResponse:
    """Export the events matching the filters, recording `audit.exported` first.

    The export holds the events that existed when it was asked for: those before its own record.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    events = event_list(user=user, filters=filters)
    with transaction.atomic():
        exported = audit.record(
            action="audit.exported", actor=user, detail={"format": fmt, "filters": filters_as_strings(filters)}
        )
    return export_response(events.filter(id__lt=exported.id), fmt, asynchronous=asynchronous)
