"""The live audit stream: events committed after connecting arrive; a reconnect with the last id gets
exactly the missed ones; concurrent writers never commit an id a reader could skip."""

from __future__ import annotations

import threading

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection, connections

import audit
from audit.models import AuditEvent
from console.asgi import application
from tests.console.test_websocket import ORIGIN, session_cookie
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


async def connect(user) -> WebsocketCommunicator:
    cookie = await database_sync_to_async(session_cookie)(user)
    socket = WebsocketCommunicator(application, "/ws/audit/", headers=[ORIGIN, (b"cookie", cookie)])
    connected, _ = await socket.connect()
    assert connected
    return socket


async def receive_items(socket, count: int) -> list[dict]:
    items = []
    while len(items) < count:
        message = await socket.receive_json_from(timeout=10)
        if message["type"] == "items":
            items.extend(message["items"])
    return items


async def test_live_events_then_reconnect_gets_exactly_the_missed_ones(redis_url):
    auditor = await database_sync_to_async(UserFactory)(roles=["auditor"])
    record = database_sync_to_async(lambda i: audit.record(action="test.live", actor=None, detail={"i": i}))
    await record(0)
    socket = await connect(auditor)  # logging in records auth.login too
    existing = await database_sync_to_async(
        lambda: list(AuditEvent.objects.order_by("id").values_list("id", flat=True))
    )()
    await socket.send_json_to({"type": "subscribe", "after": 0})
    backlog = await receive_items(socket, len(existing))
    assert (await socket.receive_json_from(timeout=10))["type"] == "caught_up"
    first = await record(1)  # committed after the subscription: arrives live
    live = await receive_items(socket, 1)
    assert [item["seq"] for item in backlog] == existing
    assert [item["seq"] for item in live] == [first.id]
    await socket.disconnect()

    for i in range(2, 6):  # while disconnected
        await record(i)
    socket = await connect(auditor)  # (another auth.login)
    missed = await database_sync_to_async(
        lambda: list(AuditEvent.objects.filter(id__gt=first.id).order_by("id").values_list("id", flat=True))
    )()
    assert len(missed) == 5
    await socket.send_json_to({"type": "subscribe", "after": first.id})
    got = await receive_items(socket, len(missed))
    assert [item["seq"] for item in got] == missed
    caught_up = await socket.receive_json_from(timeout=10)
    assert caught_up == {"type": "caught_up", "seq": missed[-1]}
    assert await socket.receive_nothing(timeout=0.3)
    await socket.disconnect()


async def test_engineers_may_not_watch_and_the_denial_is_recorded(redis_url):
    engineer = await database_sync_to_async(UserFactory)(roles=["engineer"])
    cookie = await database_sync_to_async(session_cookie)(engineer)
    socket = WebsocketCommunicator(application, "/ws/audit/", headers=[ORIGIN, (b"cookie", cookie)])
    connected, code = await socket.connect()
    assert not connected and code == 4403
    denied = await database_sync_to_async(
        lambda: AuditEvent.objects.filter(action="permission.denied", actor_id=engineer.pk).count()
    )()
    assert denied == 1


def test_concurrent_writers_never_commit_an_id_a_reader_skips():
    """Readers backfill with `id > last seen`; that is only safe if no smaller id commits later."""
    writers, per_writer = 4, 25
    seen: list[int] = []
    stop = threading.Event()

    def write():
        try:
            for i in range(per_writer):
                audit.record(action="test.concurrent", actor=None, detail={"i": i})
        finally:
            connection.close()

    def read():
        last = 0
        try:
            while not stop.is_set() or AuditEvent.objects.filter(id__gt=last).exists():
                batch = list(AuditEvent.objects.filter(id__gt=last).order_by("id").values_list("id", flat=True))
                for event_id in batch:
                    assert event_id == last + 1, f"reader skipped from {last} to {event_id}"
                    last = event_id
                seen.extend(batch)
        finally:
            connection.close()

    base = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    reader.join(30)
    connections.close_all()
    assert [i for i in seen if i > base] == list(range(base + 1, base + 1 + writers * per_writer))


async def test_a_live_item_that_overtakes_another_is_sent_after_the_gap_is_filled(redis_url, monkeypatch):
    from channels.layers import get_channel_layer

    import audit.recorder
    from audit.streams import event_item
    from console.streams import group_name

    auditor = await database_sync_to_async(UserFactory)(roles=["auditor"])
    socket = await connect(auditor)
    await socket.send_json_to({"type": "subscribe", "after": 0})
    while (await socket.receive_json_from(timeout=10))["type"] != "caught_up":
        pass
    monkeypatch.setattr(audit.recorder, "_publish", lambda event: None)  # hold back the live messages
    record = database_sync_to_async(lambda i: audit.record(action="test.gap", actor=None, detail={"i": i}))
    events = [await record(i) for i in range(3)]
    # Only the last arrives live, as if it had overtaken the other two on the way.
    await get_channel_layer().group_send(
        group_name("audit"), {"type": "stream.items", "items": [event_item(events[-1])]}
    )
    got = await receive_items(socket, 3)
    assert [item["seq"] for item in got] == [event.id for event in events]
    assert await socket.receive_nothing(timeout=0.3)
    await socket.disconnect()
