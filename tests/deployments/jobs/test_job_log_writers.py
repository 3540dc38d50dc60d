"""Two writers at one job's seqs: a runner cut from the database holds its lines in memory while the reaper notes the
lost lease (and the job's next attempt writes) at the same seqs. On its return every line it wrote is stored after
theirs, in order, and published as stored; none is dropped as "already stored" (issue 20: the agent cut from the
network lost the traceback its serve job logged when the database came back)."""

from __future__ import annotations

import pytest

from deployments.jobs import log as job_log
from deployments.jobs.log import JobLog
from deployments.jobs.services import job_log_line
from deployments.models import Job, JobLogLine
from tests.factories import JobFactory

pytestmark = [pytest.mark.django_db, pytest.mark.both_databases]  # the SQLite path inserts otherwise

HELD = {"flush_seconds": 3600, "flush_lines": 10**6}  # lines stay in memory until flush(), as while the link is cut


@pytest.fixture
def published(monkeypatch) -> list[dict]:
    """What the writers send to live subscribers (at once, instead of after commit)."""
    items: list[dict] = []
    monkeypatch.setattr(job_log, "publish_on_commit", lambda stream, batch: items.extend(batch))
    return items


def stored(job: Job) -> list[tuple[int, str]]:
    return list(JobLogLine.objects.filter(job=job).order_by("seq").values_list("seq", "text"))


def test_lines_held_while_the_reaper_wrote_at_their_seqs_are_stored_after_its_line(published):
    job = JobFactory(status=Job.Status.RUNNING)
    runner = JobLog(job, **HELD)
    runner.write("attempt 1 of 3")
    runner.flush()
    runner.write("Traceback: the database went away")  # seq 2, held: the link is cut
    runner.write("lease lost: another attempt owns this job now")  # seq 3
    job_log_line(Job.objects.get(pk=job.pk), "worker w stopped renewing its lease; retrying")  # seq 2, stored
    runner.write("stopping")
    runner.flush()

    assert stored(job) == [
        (1, "attempt 1 of 3"),
        (2, "worker w stopped renewing its lease; retrying"),
        (3, "Traceback: the database went away"),
        (4, "lease lost: another attempt owns this job now"),
        (5, "stopping"),
    ]
    assert Job.objects.get(pk=job.pk).log_seq == runner.seq == 5
    # Subscribers were sent the runner's lines at the seqs they are stored at (the reaper publishes its own).
    assert [(item["seq"], item["text"]) for item in published] == [s for s in stored(job) if s[0] != 2]
    runner.write("next")  # the writer goes on numbering after its moved lines
    runner.flush()
    assert stored(job)[-1] == (6, "next")


def test_two_attempts_writing_at_once_keep_all_their_lines_each_in_order(published):
    job = JobFactory(status=Job.Status.RUNNING)
    first, second = JobLog(job, **HELD), JobLog(job, **HELD)  # both start at log_seq 0
    for n in range(3):
        first.write(f"first {n}")
        second.write(f"second {n}")
    second.flush()
    first.write("first 3", stream="progress", data={"step": 3, "loss": 0.25})
    first.flush()
    second.write("second 3")
    second.flush()

    lines = stored(job)
    assert [seq for seq, _ in lines] == list(range(1, 9))
    assert [text for _, text in lines if text.startswith("first")] == [f"first {n}" for n in range(4)]
    assert [text for _, text in lines if text.startswith("second")] == [f"second {n}" for n in range(4)]
    assert sorted(item["seq"] for item in published) == list(range(1, 9))


def test_a_batch_whose_commit_went_unseen_is_stored_once():
    """A flush that committed but saw an error (the connection dropped after COMMIT) puts its lines back; the next
    flush finds them stored as they are, its own, and neither duplicates nor moves them."""
    job = JobFactory(status=Job.Status.RUNNING)
    log = JobLog(job, **HELD)
    log.write("loading")
    log.write("", stream="progress", data={"step": 1, "loss": 0.5, "tags": ["a", "b"]})
    batch = log._take()
    log._store(batch)
    log.pending[:0] = batch  # as flush() does when the store raised
    log.write("loaded")
    log.flush()

    assert stored(job) == [(1, "loading"), (2, ""), (3, "loaded")]
    assert log.seq == 3
