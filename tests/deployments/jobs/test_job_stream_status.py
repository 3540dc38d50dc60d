"""What a job's stream sends about the job's status (issue 20, defect 4): a page that says which status it shows
(the deployment page's job badge) is told each change, claimed and finished, the outcome before the end marker;
a client that says nothing gets the protocol it always had."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from deployments.jobs.log import JobLog
from deployments.models import Job
from tests.console.test_stream_convergence import _socket
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db(transaction=True)
IDLE_MS = 300


@pytest.fixture
def quick_idle_check(settings):
    settings.STREAM_IDLE_CHECK_MS = IDLE_MS


def _set_status(job: Job, status: str) -> None:
    Job.objects.filter(pk=job.pk).update(status=status)  # as the runner's claim does


def _finish(job: Job, status: str) -> int:
    """As the runner ends a job: its last line, the outcome, the end marker published on commit."""
    log = JobLog(job)
    log.write(status)
    log.flush()
    Job.objects.filter(pk=job.pk).update(status=status)
    log.end_on_commit()
    return log.seq


async def test_a_page_showing_pending_is_told_running_then_the_outcome_before_the_end(
    redis_url, admin, quick_idle_check
):
    job = await database_sync_to_async(JobFactory)(status=Job.Status.PENDING, log_seq=0)
    socket = await _socket(admin, f"/ws/jobs/{job.pk}/")
    await socket.send_json_to({"type": "subscribe", "after": 0, "status": "pending"})
    assert await socket.receive_json_from(timeout=10) == {"type": "caught_up", "seq": 0}
    assert await socket.receive_nothing(timeout=IDLE_MS * 2 / 1000)  # nothing changed: nothing said

    await database_sync_to_async(_set_status)(job, Job.Status.RUNNING)
    assert await socket.receive_json_from(timeout=5) == {"type": "status", "status": "running"}

    final = await database_sync_to_async(_finish)(job, Job.Status.FAILED)
    messages = [await socket.receive_json_from(timeout=5) for _ in range(3)]
    assert [m["type"] for m in messages] == ["items", "status", "end"]
    assert messages[1] == {"type": "status", "status": "failed"} and messages[2] == {"type": "end", "seq": final}
    await socket.disconnect()


async def test_a_page_that_loaded_an_older_status_is_told_the_current_one_at_once(redis_url, admin, quick_idle_check):
    job = await database_sync_to_async(JobFactory)(status=Job.Status.SUCCEEDED, log_seq=0)
    socket = await _socket(admin, f"/ws/jobs/{job.pk}/")
    await socket.send_json_to({"type": "subscribe", "after": 0, "status": "running"})
    assert await socket.receive_json_from(timeout=10) == {"type": "caught_up", "seq": 0}
    assert await socket.receive_json_from(timeout=5) == {"type": "status", "status": "succeeded"}
    assert await socket.receive_json_from(timeout=5) == {"type": "end", "seq": 0}
    await socket.disconnect()


async def test_a_client_that_names_no_status_gets_no_status_messages(redis_url, admin, quick_idle_check):
    job = await database_sync_to_async(JobFactory)(status=Job.Status.PENDING, log_seq=0)
    socket = await _socket(admin, f"/ws/jobs/{job.pk}/")
    await socket.send_json_to({"type": "subscribe", "after": 0})
    assert await socket.receive_json_from(timeout=10) == {"type": "caught_up", "seq": 0}
    await database_sync_to_async(_set_status)(job, Job.Status.RUNNING)
    final = await database_sync_to_async(_finish)(job, Job.Status.SUCCEEDED)
    assert (await socket.receive_json_from(timeout=5))["type"] == "items"
    assert await socket.receive_json_from(timeout=5) == {"type": "end", "seq": final}
    await socket.disconnect()
