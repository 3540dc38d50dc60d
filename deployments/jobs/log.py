"""A job's output as numbered rows: written in batches, published to the job's live stream after commit.

A batch is stored when it reaches FLUSH_LINES, when a write comes FLUSH_SECONDS after the last store, and, while
the runner's flusher thread runs, FLUSH_SECONDS after the last store whatever the job does meanwhile (a handler
that logs "running" and then waits minutes in a loop, a sleep or a blocking call)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, DatabaseError, IntegrityError, connection, connections, transaction
from django.db.models.constants import OnConflict
from django.utils import timezone

from console.streams import publish_end_on_commit, publish_on_commit
from deployments.models import Job, JobLogLine

logger = logging.getLogger(__name__)
FLUSH_SECONDS = 1.0
FLUSH_LINES = 1000
INSERT_COLUMNS = ("job", "seq", "created_at", "stream", "text", "data")
MAX_ROWS_PER_INSERT = 1000  # keeps one INSERT well under PostgreSQL's 65,535 parameters
# The flusher waits at most this long for a row lock the job's own thread holds in an open transaction; then it
# puts the batch back and tries again at its next tick (the job's thread may itself be waiting for the flusher).
FLUSHER_LOCK_TIMEOUT_MS = 2000
# How often one batch moves past lines another writer stored at its seqs before it stores what it can (a runner cut
# from the database while the reaper noted its lost lease, or the job's next attempt, wrote at the same seqs).
RENUMBER_TRIES = 5


# A line waiting for its batch: (seq, stream, text, data). A plain tuple, not a model instance or even a
# small object: building one per line cost more than storing it.
Line = tuple


class JobLog:
    """The single writer of one job's lines while its runner holds the lease. Sequence numbers continue
    from what earlier attempts stored, so a job's lines are contiguous 1..N across attempts.

    `start()` runs a flusher thread that stores a waiting batch once it is FLUSH_SECONDS old; `stop()` ends it.
    Batches are stored one at a time, in seq order (the flush lock is held through the commit)."""

    def __init__(self, job, *, flush_seconds: float = FLUSH_SECONDS, flush_lines: int = FLUSH_LINES) -> None:
        self.job_id, self.stream_name = job.pk, job.stream
        self.seq = job.log_seq
        self.pending: list[Line] = []
        self.flush_seconds, self.flush_lines = flush_seconds, flush_lines
        self.last_flush = time.monotonic()
        self._pending_lock = threading.Lock()  # the list and seq; held for microseconds
        self._flush_lock = threading.Lock()  # one batch in flight, so batches commit in seq order
        self._owner = connections[DEFAULT_DB_ALIAS]  # the writing thread's connection
        self._flusher: threading.Thread | None = None
        self._stopped = threading.Event()

    def write(self, text: str = "", *, stream: str = "log", data: dict | None = None) -> None:
        with self._pending_lock:
            self.seq += 1
            self.pending.append((self.seq, stream, text[:10_000], data))
            due = len(self.pending) >= self.flush_lines or time.monotonic() - self.last_flush >= self.flush_seconds
        if due:
            try:
                self.flush()
            except DatabaseError as exc:
                if self._owner.in_atomic_block:
                    raise  # the caller's transaction failed with it; the caller decides
                # The database is away (restarting, unreachable): the lines wait for a later flush, the job goes on.
                logger.info("job %s: storing %d log lines later: %s", self.job_id, len(self.pending), exc)

    def flush(self) -> None:
        """Store every waiting line now. On a database error the lines wait again (in order) and the error is
        raised: nothing taken for a batch is dropped."""
        with self._flush_lock:
            lines = self._take()
            if lines:
                try:
                    self._store(lines)
                except DatabaseError:
                    with self._pending_lock:
                        self.pending[:0] = lines
                    raise

    def end_on_commit(self) -> None:
        """The job's outcome is being written: after commit, tell live subscribers its stream is over."""
        publish_end_on_commit(self.stream_name, self.seq)

    def start(self) -> None:
        """Store waiting lines from a thread of their own once they are FLUSH_SECONDS old."""
        if self._flusher is None:
            self._stopped.clear()
            self._flusher = threading.Thread(target=self._flush_loop, name=f"job-{self.job_id}-log", daemon=True)
            self._flusher.start()

    def stop(self) -> None:
        """End the flusher (lines still waiting are stored by the next flush())."""
        if self._flusher is not None:
            self._stopped.set()
            self._flusher.join(FLUSHER_LOCK_TIMEOUT_MS / 1000 + 5)
            self._flusher = None

    def _take(self) -> list[Line]:
        with self._pending_lock:
            self.last_flush = time.monotonic()
            lines, self.pending = self.pending, []
        return lines

    def _flush_loop(self) -> None:
        tick = min(0.2, self.flush_seconds / 4)
        try:
            while not self._stopped.wait(tick):
                self.flush_due()
        finally:
            connection.close()  # this thread's own connection

    def flush_due(self) -> None:
        """From the flusher: store what waited FLUSH_SECONDS, unless the job's thread is inside a transaction
        (its lines then commit with that transaction, by its own flush)."""
        if not self.pending or time.monotonic() - self.last_flush < self.flush_seconds:
            return
        if self._owner.in_atomic_block or not self._flush_lock.acquire(blocking=False):
            return
        try:
            lines = self._take()
            if not lines:
                return
            try:
                self._store(lines, lock_timeout_ms=FLUSHER_LOCK_TIMEOUT_MS)
            except DatabaseError as exc:  # a lock held by the job's thread, the database away: try again later
                logger.info("job %s: storing %d log lines later: %s", self.job_id, len(lines), exc)
                with self._pending_lock:
                    self.pending[:0] = lines
        finally:
            self._flush_lock.release()

    def _store(self, lines: list[Line], *, lock_timeout_ms: int | None = None) -> None:
        """Store `lines` in one transaction. A seq another writer took meanwhile (the reaper's note that the lease
        expired, the next attempt of a runner cut from the database) moves this writer's lines from there on, and
        the lines it writes next, after the job's head: renumbered in place in `lines`, so a failed store puts them
        back as they now are. A seq this writer stored itself (a commit that succeeded unseen) is stored once."""
        # Rows and items are built before the transaction: on SQLite it holds the database's one write lock.
        now = timezone.now()  # one time per batch, as auto_now_add stamped the rows of one bulk_create
        rows, items = _rows(self.job_id, now, lines), _items(now, lines)
        with transaction.atomic():
            if lock_timeout_ms is not None and connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
            for attempt in range(RENUMBER_TRIES + 1):
                try:
                    with transaction.atomic():  # a savepoint: lines stored after another writer's go back out
                        inserted = _insert(rows)
                        if inserted != len(lines):  # some seq was stored already: by this writer, or another
                            displaced = self._first_foreign(lines)
                            if displaced is not None and attempt < RENUMBER_TRIES:
                                raise _Displaced(displaced)
                            if displaced is not None:
                                logger.warning("job %s: lines from seq %d on were not stored: another writer keeps "
                                               "taking their seqs", self.job_id, lines[displaced][0])  # fmt: skip
                    break
                except _Displaced as moved:
                    self._renumber(lines, moved.index)
                    rows, items = _rows(self.job_id, now, lines), _items(now, lines)
            Job.objects.filter(pk=self.job_id, log_seq__lt=lines[-1][0]).update(log_seq=lines[-1][0])
            if inserted != len(lines):  # what the database holds at these seqs (another writer's, if it kept them)
                stored = JobLogLine.objects.filter(job_id=self.job_id, seq__gte=lines[0][0], seq__lte=lines[-1][0])
                items = [line.as_item() for line in stored.order_by("seq")]
            publish_on_commit(self.stream_name, items)

    def _first_foreign(self, lines: list[Line]) -> int | None:
        """The index of the first line whose seq holds another writer's line; None when every stored one is ours."""
        stored = {
            seq: (stream, text, data)
            for seq, stream, text, data in JobLogLine.objects.filter(
                job_id=self.job_id, seq__gte=lines[0][0], seq__lte=lines[-1][0]
            ).values_list("seq", "stream", "text", "data")
        }
        for index, (seq, stream, text, data) in enumerate(lines):
            if seq in stored and stored[seq] != (stream, text, None if data is None else json.loads(json.dumps(data))):
                return index
        return None

    def _renumber(self, lines: list[Line], index: int) -> None:
        """Move lines[index:], and every line this writer numbers after them, past the job's head (in order)."""
        head = JobLogLine.objects.filter(job_id=self.job_id).order_by("-seq").values_list("seq", flat=True).first()
        shift = (head or 0) + 1 - lines[index][0]
        logger.info("job %s: seq %d on was taken by another writer; storing this writer's lines from %d on",
                    self.job_id, lines[index][0], lines[index][0] + shift)  # fmt: skip
        lines[index:] = [(seq + shift, stream, text, data) for seq, stream, text, data in lines[index:]]
        with self._pending_lock:
            self.seq += shift
            self.pending = [(seq + shift, stream, text, data) for seq, stream, text, data in self.pending]


class _Displaced(Exception):
    """Rolls back a batch's savepoint: from lines[index] on, its seqs hold another writer's lines."""

    def __init__(self, index: int) -> None:
        self.index = index


def _items(created_at: datetime, lines: list[Line]) -> list[dict]:
    """The batch as live items, JobLogLine.as_item's shape built directly: formatting the same time per line cost
    as much as storing it."""
    time_text = created_at.isoformat()
    return [
        {"seq": seq, "time": time_text, "stream": stream, "text": text, "data": data}
        for seq, stream, text, data in lines
    ]


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
