"""A job's output as numbered rows: written in batches, published to the job's live stream after commit."""

from __future__ import annotations

import time

from django.db import transaction

from console.streams import publish_on_commit

FLUSH_SECONDS = 1.0
FLUSH_LINES = 1000


class JobLog:
    """The single writer of one job's lines while its runner holds the lease. Sequence numbers continue
    from what earlier attempts stored, so a job's lines are contiguous 1..N across attempts."""

    def __init__(self, job, *, flush_seconds: float = FLUSH_SECONDS, flush_lines: int = FLUSH_LINES) -> None:
        self.job_id, self.stream_name = job.pk, job.stream
        self.seq = job.log_seq
        self.pending: list = []
        self.flush_seconds, self.flush_lines = flush_seconds, flush_lines
        self.last_flush = time.monotonic()

    def write(self, text: str = "", *, stream: str = "log", data: dict | None = None) -> None:
        from deployments.models import JobLogLine

        self.seq += 1
        self.pending.append(JobLogLine(job_id=self.job_id, seq=self.seq, stream=stream, text=text[:10_000], data=data))
        if len(self.pending) >= self.flush_lines or time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        from deployments.models import Job, JobLogLine

        self.last_flush = time.monotonic()
        if not self.pending:
            return
        lines, self.pending = self.pending, []
        with transaction.atomic():
            # ignore_conflicts: a line already stored (same job, seq) is never stored twice.
            JobLogLine.objects.bulk_create(lines, ignore_conflicts=True)
            Job.objects.filter(pk=self.job_id, log_seq__lt=lines[-1].seq).update(log_seq=lines[-1].seq)
            stored = JobLogLine.objects.filter(job_id=self.job_id, seq__gte=lines[0].seq, seq__lte=lines[-1].seq)
            publish_on_commit(self.stream_name, [line.as_item() for line in stored.order_by("seq")])
