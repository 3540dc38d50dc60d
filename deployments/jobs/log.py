"""A job's output as numbered rows: written in batches, published to the job's live stream after commit."""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models.constants import OnConflict
from django.utils import timezone

from console.streams import publish_on_commit
from deployments.models import Job, JobLogLine

logger = logging.getLogger(__name__)
FLUSH_SECONDS = 1.0
FLUSH_LINES = 1000
INSERT_COLUMNS = ("job", "seq", "created_at", "stream", "text", "data")
MAX_ROWS_PER_INSERT = 1000  # keeps one INSERT well under PostgreSQL's 65,535 parameters


# A line waiting for its batch: (seq, stream, text, data). A plain tuple, not a model instance or even a
# small object: building one per line cost more than storing it.
Line = tuple


class JobLog:
    """The single writer of one job's lines while its runner holds the lease. Sequence numbers continue
    from what earlier attempts stored, so a job's lines are contiguous 1..N across attempts."""

    def __init__(self, job, *, flush_seconds: float = FLUSH_SECONDS, flush_lines: int = FLUSH_LINES) -> None:
        self.job_id, self.stream_name = job.pk, job.stream
        self.seq = job.log_seq
        self.pending: list[Line] = []
        self.flush_seconds, self.flush_lines = flush_seconds, flush_lines
        self.last_flush = time.monotonic()

    def write(self, text: str = "", *, stream: str = "log", data: dict | None = None) -> None:
        self.seq += 1
        self.pending.append((self.seq, stream, text[:10_000], data))
        if len(self.pending) >= self.flush_lines or time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        lines, self.pending = self.pending, []
        # Rows and items are built before the transaction: on SQLite it holds the database's one write lock.
        now = timezone.now()  # one time per batch, as auto_now_add stamped the rows of one bulk_create
        rows = _rows(self.job_id, now, lines)
        # JobLogLine.as_item's shape, built directly: formatting the same time per line cost as much as storing it
        time_text = now.isoformat()
        items = [
            {"seq": seq, "time": time_text, "stream": stream, "text": text, "data": data}
            for seq, stream, text, data in lines
        ]
        with transaction.atomic():
            inserted = _insert(rows)
            Job.objects.filter(pk=self.job_id, log_seq__lt=lines[-1][0]).update(log_seq=lines[-1][0])
            if inserted != len(lines):  # some seq was stored already (the reaper, an earlier attempt)
                stored = JobLogLine.objects.filter(job_id=self.job_id, seq__gte=lines[0][0], seq__lte=lines[-1][0])
                items = [line.as_item() for line in stored.order_by("seq")]
            publish_on_commit(self.stream_name, items)


def _fields() -> list:
    return [JobLogLine._meta.get_field(name) for name in INSERT_COLUMNS]


def _rows(job_id: int, created_at: datetime, lines: list[Line]) -> list[tuple]:
    """The batch as INSERT_COLUMNS parameters."""
    fields = _fields()
    created_at_value, data_field = fields[2].get_db_prep_save(created_at, connection), fields[5]
    return [
        (
            job_id,
            seq,
            created_at_value,
            stream,
            text,
            None if data is None else data_field.get_db_prep_save(data, connection),
        )
        for seq, stream, text, data in lines
    ]


def _insert(rows: list[tuple]) -> int:
    """Store a batch, skipping a (job, seq) already stored (as bulk_create's ignore_conflicts did, at a
    fraction of its per-row cost); returns how many rows were inserted."""
    if connection.vendor == "postgresql" and _copy(rows):
        return len(rows)
    return _insert_ignoring_stored(rows)


def _copy(rows: list[tuple]) -> bool:
    """PostgreSQL: a binary COPY, several times cheaper for the worker than any INSERT through psycopg. It cannot
    skip a stored row, so on a conflict (or any error) its savepoint rolls it back and the caller INSERTs."""
    types = [field.db_type(connection).split("(")[0] for field in _fields()]  # "varchar", not "varchar(10)"
    try:
        with (
            transaction.atomic(),
            connection.cursor() as cursor,
            connection.wrap_database_errors,
            cursor.copy(f"COPY {_table()} ({_columns()}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
    except IntegrityError:  # a stored (job, seq)
        return False
    except DatabaseError as exc:  # e.g. a column type COPY did not expect: slower, but nothing is lost
        logger.warning("COPY of job %s's lines failed, inserting them instead: %s", rows[0][0], exc)
        return False
    return True


def _insert_ignoring_stored(rows: list[tuple]) -> int:
    """Multi-row INSERTs that skip stored rows (on SQLite a third faster than executemany)."""
    ops, fields = connection.ops, _fields()
    size = max(1, min(ops.bulk_batch_size(fields, rows), MAX_ROWS_PER_INSERT))
    # SQLite: qmark placeholders on the driver's own cursor, skipping Django's %s -> ? rewrite of the whole
    # statement (a regex over every multi-row INSERT, a tenth of the cost of storing a line).
    sqlite = connection.vendor == "sqlite"
    row_sql = f"({', '.join(['?' if sqlite else '%s'] * len(fields))})"
    inserted = 0
    connection.ensure_connection()
    with contextlib.closing(connection.connection.cursor()) if sqlite else connection.cursor() as cursor:
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            cursor.execute(
                f"{ops.insert_statement(on_conflict=OnConflict.IGNORE)} {_table()} ({_columns()}) "
                f"VALUES {', '.join([row_sql] * len(chunk))} "
                f"{ops.on_conflict_suffix_sql(fields, OnConflict.IGNORE, None, None)}",
                [value for row in chunk for value in row],
            )
            inserted += cursor.rowcount
    return inserted


def _table() -> str:
    return connection.ops.quote_name(JobLogLine._meta.db_table)


def _columns() -> str:
    return ", ".join(connection.ops.quote_name(field.column) for field in _fields())
