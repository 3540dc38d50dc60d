"""A job's line reaches the API and the live stream within the flush interval, whatever the job does next
(issue 13, item 1: a serve job's "running: ..." line appeared only when the job was stopped, minutes later)."""

from __future__ import annotations

import threading
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection

import tests.support.job_handlers as job_handlers
from console.asgi import application
from deployments.jobs.services import job_create
from tests.console.test_websocket import ORIGIN, session_cookie
from tests.support.aio import run_async
from workers import runner

pytestmark = pytest.mark.django_db(transaction=True)
LINE = "running: waiting quietly"
DEADLINE = 1.5  # the flush interval (1 s) and the flusher's tick


def _run(job_id: int) -> None:
    try:
        runner.run(job_id)
    finally:
        connection.close()


def test_a_line_logged_before_a_long_wait_is_readable_and_live_within_the_flush_interval(redis_url, admin, api):
    # A sync test running its coroutine in a thread: browser tests before it leave an event loop on this one.
    run_async(_line_arrives_while_the_job_waits(admin, api))


async def _line_arrives_while_the_job_waits(admin, api):
    job = await database_sync_to_async(job_create)(kind="test.quiet", actor=None, params={"seconds": 10})
    cookie = await database_sync_to_async(session_cookie)(admin)
    socket = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/", headers=[ORIGIN, (b"cookie", cookie)])
    assert (await socket.connect())[0]
    await socket.send_json_to({"type": "subscribe", "after": 0})
    assert (await socket.receive_json_from(timeout=10))["type"] == "caught_up"

    job_handlers.QUIET_WAKE.clear()
    worker = threading.Thread(target=_run, args=(job.pk,))
    started = time.monotonic()
    worker.start()
    try:
        live: list[str] = []
        while LINE not in live:
            left = started + DEADLINE - time.monotonic()
            try:
                assert left > 0
                message = await socket.receive_json_from(timeout=left)
            except (AssertionError, TimeoutError):
                pytest.fail(f"after {DEADLINE} s the socket had only {live}")
            live += [item["text"] for item in message.get("items", [])]
        page = await database_sync_to_async(lambda: api(admin).get(f"/api/v1/jobs/{job.pk}/log/").json())()
        assert LINE in [item["text"] for item in page["items"]]
        assert time.monotonic() - started < DEADLINE
        assert worker.is_alive()  # still waiting: the line did not need the job to end
    finally:
        job_handlers.QUIET_WAKE.set()
        await database_sync_to_async(worker.join)(15)
        await socket.disconnect()
