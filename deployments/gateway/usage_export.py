"""The filtered usage rows as a streamed CSV download, memory flat whatever the range: rows are read in keyset
pages on id and sent in blocks; under ASGI each block is read in the request's thread (as the audit export)."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.db.models import QuerySet
from django.http import StreamingHttpResponse

from audit.export import safe_cell
from deployments.gateway.usage import KEY_FIELDS, Figures, dimension_labels
from deployments.models import UsageDay

COLUMNS = (
    "day",
    "key_id",
    "key",
    "team_id",
    "team",
    "deployment_id",
    "deployment",
    "adapter",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "p50_ms",
    "p90_ms",
    "p99_ms",
)
PAGE_SIZE = 1000


class _Echo:
    def write(self, value: str) -> str:
        return value


def _pages(rows: QuerySet[UsageDay]) -> Iterator[list[UsageDay]]:
    ordered = rows.order_by("id")
    last = 0
    while page := list(ordered.filter(id__gt=last)[:PAGE_SIZE]):
        yield page
        last = page[-1].id


def csv_blocks(rows: QuerySet[UsageDay]) -> Iterator[str]:
    """The header, then one block of lines per page of rows; names looked up once per page."""
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for page in _pages(rows):
        names = {
            dimension: dimension_labels(dimension, {getattr(row, f"{dimension}_id") for row in page})
            for dimension in ("key", "team", "deployment")
        }
        lines = []
        for row in page:
            figures = Figures()
            figures.add(row.requests, row.errors, row.prompt_tokens, row.completion_tokens, row.latency_histogram)
            shown = figures.as_dict()
            record = {name: getattr(row, name) for name in KEY_FIELDS}
            record.update({dimension: names[dimension][getattr(row, f"{dimension}_id")] for dimension in names})
            record.update({name: shown[name] for name in COLUMNS if name in shown})
            record["day"] = row.day.isoformat()
            lines.append(writer.writerow([safe_cell(record[column]) for column in COLUMNS]))
        yield "".join(lines)


async def _async_blocks(blocks: Iterator[str]) -> AsyncIterator[str]:
    end = object()
    read = sync_to_async(next)  # thread-sensitive: the request's own thread and database connection
    while (block := await read(blocks, end)) is not end:
        yield block


def usage_csv_response(rows: QuerySet[UsageDay], *, asynchronous: bool = False) -> StreamingHttpResponse:
    """Stream the rows as CSV, as an attachment named usage-<UTC time>.csv."""
    blocks = csv_blocks(rows)
    response = StreamingHttpResponse(
        _async_blocks(blocks) if asynchronous else blocks, content_type="text/csv; charset=utf-8"
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="usage-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response
