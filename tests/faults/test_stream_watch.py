"""The fault tests' stream client against the real console under daphne: it holds every line of a job
written while it follows, gets the end, and after the server is killed and started again it reconnects with
its last seq and misses nothing."""

from __future__ import annotations

import threading
import time

import pytest

from deployments.jobs.log import JobLog
from deployments.jobs.models import Job
from tests.deploy.prometheus_live import ConsoleProcess
from tests.factories.jobs import JobFactory
from tests.faults.stream_watch import StreamWatcher, daphne_env, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def _write(job: Job, lines: int, pause: float) -> None:
    log = JobLog(job, flush_seconds=0.05)
    log.start()
    for n in range(lines):
        log.write(f"line {n + 1}")
        time.sleep(pause)
    log.stop()
    log.flush()  # what was still waiting
    log.end_on_commit()


def test_the_watcher_holds_every_line_across_a_killed_server(admin, redis_url, tmp_path):
    job = JobFactory(status=Job.Status.RUNNING)
    env = daphne_env(redis_url)
    server = ConsoleProcess(tmp_path).start(env)
    watcher = StreamWatcher(server.url, f"/ws/jobs/{job.pk}/", session_cookie(admin)).start()
    try:
        writer = threading.Thread(target=_write, args=(job, 300, 0.01))
        writer.start()
        assert watcher.wait_for(20, 30), watcher.errors
        server.process.kill()  # mid-stream: the client must come back with its last seq
        server.process.wait()
        server.start(env)
        writer.join()
        Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED)
        job.refresh_from_db()
        assert job.log_seq == 300
        assert watcher.wait_for_end(30), (watcher.last_seq, watcher.errors)
    finally:
        watcher.stop()
        server.stop()
    assert watcher.missing(300) == [] and watcher.ended_seq == 300
    assert watcher.connections >= 2
