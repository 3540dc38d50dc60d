"""A live stream converges to what was committed even when its last live messages are lost (issue 13, item 1b:
channels-redis drops a group message for a channel over capacity, silently; nothing later revealed the gap, so
the reader waited forever). A finished job's stream ends with an end marker carrying its final seq."""

from __future__ import annotations

import io
import json
import time

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.core.management import call_command

import audit
import audit.recorder
import console.streams
from console import stream_metrics
from console.asgi import application
from deployments.jobs.log import JobLog
from deployments.models import Job
from tests.console.test_websocket import ORIGIN, session_cookie
from tests.factories import JobFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)
IDLE_MS = 300


@pytest.fixture
def quick_idle_check(settings):
    settings.STREAM_IDLE_CHECK_MS = IDLE_MS


@pytest.fixture
def drop_after_first(monkeypatch):
    """Every message to a stream's group after the first is lost on the way, as over capacity."""
    real, sent, dropped = console.streams._Publisher.put, set(), []

    def put(self, group, message, done):
        if group in sent:
            dropped.append(message)
            if done is not None:
                done.set()
            return
        sent.add(group)
        real(self, group, message, done)

    monkeypatch.setattr(console.streams._Publisher, "put", put)
    return dropped


def _command_output(name: str) -> str:
    out = io.StringIO()
    call_command(name, stdout=out)
    return out.getvalue()


async def _socket(user, path: str) -> WebsocketCommunicator:
    cookie = await database_sync_to_async(session_cookie)(user)
    socket = WebsocketCommunicator(application, path, headers=[ORIGIN, (b"cookie", cookie)])
    assert (await socket.connect())[0]
    return socket


async def _read_until_end(socket, timeout: float) -> tuple[list[int], dict]:
    """Seqs received and the end message, reading until the end marker (each message within `timeout`)."""
    seqs, end = [], None
    while end is None:
        message = await socket.receive_json_from(timeout=timeout)
        if message["type"] == "items":
            seqs += [item["seq"] for item in message["items"]]
        elif message["type"] == "end":
            end = message
    return seqs, end


def _write_batches(job: Job, batches: int, size: int) -> int:
    log = JobLog(job)
    for batch in range(batches):
        for line in range(size):
            log.write(f"batch {batch} line {line}")
        log.flush()
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED)
    return log.seq


async def test_a_job_stream_whose_last_batches_are_lost_converges_and_ends(
    redis_url, admin, quick_idle_check, drop_after_first
):
    job = await database_sync_to_async(JobFactory)(status=Job.Status.RUNNING, log_seq=0)
    socket = await _socket(admin, f"/ws/jobs/{job.pk}/")
    await socket.send_json_to({"type": "subscribe", "after": 0})
    assert await socket.receive_json_from(timeout=10) == {"type": "caught_up", "seq": 0}
    before = await database_sync_to_async(stream_metrics.totals)()

    final = await database_sync_to_async(_write_batches)(job, 3, 5)
    finished = time.monotonic()
    seqs, end = await _read_until_end(socket, timeout=5)

    assert len(drop_after_first) == 2  # the last two batches never reached the group
    assert seqs == list(range(1, final + 1))  # every stored line, once, in order
    assert end == {"type": "end", "seq": final}
    assert time.monotonic() - finished < IDLE_MS / 1000 + 2
    after = await database_sync_to_async(stream_metrics.totals)()
    assert after[stream_metrics.ITEMS_BACKFILLED] - before[stream_metrics.ITEMS_BACKFILLED] == 10
    await socket.disconnect()

    # A reader who arrives later gets the whole stream, then the end at once.
    socket = await _socket(admin, f"/ws/jobs/{job.pk}/")
    await socket.send_json_to({"type": "subscribe", "after": 12})
    assert (await socket.receive_json_from(timeout=10))["type"] == "items"
    assert await socket.receive_json_from(timeout=10) == {"type": "caught_up", "seq": final}
    assert await socket.receive_json_from(timeout=10) == {"type": "end", "seq": final}
    await socket.disconnect()


async def test_the_audit_stream_converges_when_its_live_messages_are_lost(redis_url, quick_idle_check, monkeypatch):
    auditor = await database_sync_to_async(UserFactory)(roles=["auditor"])
    socket = await _socket(auditor, "/ws/audit/")
    await socket.send_json_to({"type": "subscribe", "after": 0})
    while (await socket.receive_json_from(timeout=10))["type"] != "caught_up":
        pass
    monkeypatch.setattr(audit.recorder, "_publish", lambda event: None)  # every live message lost
    record = database_sync_to_async(lambda i: audit.record(action="test.lost", actor=None, detail={"i": i}))
    events = [await record(i) for i in range(3)]
    seqs = []
    while len(seqs) < len(events):
        message = await socket.receive_json_from(timeout=IDLE_MS / 1000 + 2)
        seqs += [item["seq"] for item in message["items"]]
    assert seqs == [event.id for event in events]
    assert await socket.receive_nothing(timeout=2 * IDLE_MS / 1000)  # the audit log never ends
    await socket.disconnect()


async def test_group_sends_dropped_over_capacity_are_counted(redis_url, monkeypatch):
    layer = get_channel_layer()
    monkeypatch.setattr(layer, "capacity", 1)
    channel = await layer.new_channel()
    await layer.group_add(console.streams.group_name("overfull"), channel)  # a subscriber that never reads
    before = await database_sync_to_async(stream_metrics.totals)()
    for seq in (1, 2, 3):
        await database_sync_to_async(console.streams.publish)("overfull", [{"seq": seq}], wait=5)
    after = await database_sync_to_async(stream_metrics.totals)()
    assert after[stream_metrics.OVER_CAPACITY] - before[stream_metrics.OVER_CAPACITY] == 2
    text = await database_sync_to_async(_command_output)("stream_metrics")
    assert f"llmdeploy_stream_publish_over_capacity_total {after[stream_metrics.OVER_CAPACITY]}" in text
    await layer.group_discard(console.streams.group_name("overfull"), channel)


def test_a_large_backfill_goes_out_in_messages_a_browser_accepts():
    """daphne refuses a websocket message over 1 MiB; a lost tail of long lines is sent in several."""
    items = [{"seq": seq, "text": "x" * 9_000 if seq % 2 else "日本語" * 3_000, "data": None} for seq in range(1, 400)]
    chunks = console.streams._chunks(items)
    assert [item for chunk in chunks for item in chunk] == items
    assert len(chunks) > 1 and all(len(json.dumps({"type": "items", "items": c})) < 1024 * 1024 for c in chunks)
