"""Websockets through the real ASGI stack and the real channels-redis layer."""

from __future__ import annotations

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.test import Client

from console.asgi import application
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True)]
ORIGIN = (b"origin", b"http://127.0.0.1")


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def communicator(cookie: bytes | None = None, origin=ORIGIN) -> WebsocketCommunicator:
    headers = [origin] if origin else []
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, "/ws/heartbeat/", headers=headers)


def test_layer_is_channels_redis_with_raised_capacity(redis_url):
    layer = get_channel_layer()
    assert isinstance(layer, RedisChannelLayer) and layer.brpop_timeout < 5  # inside redis-py's 5 s read timeout
    assert layer.capacity >= 10_000
    assert layer.group_expiry >= 86_400


async def test_ping_travels_through_the_redis_layer(redis_url):
    from channels.db import database_sync_to_async

    user = await database_sync_to_async(UserFactory)(roles=["auditor"])
    cookie = await database_sync_to_async(session_cookie)(user)
    socket = communicator(cookie)
    connected, _ = await socket.connect()
    assert connected
    await socket.send_json_to({"type": "ping", "seq": 7})
    reply = await socket.receive_json_from(timeout=5)
    assert reply["type"] == "pong" and reply["seq"] == 7
    # A message sent into the group from elsewhere (another process would do the same) arrives too.
    await get_channel_layer().group_send(f"heartbeat-user-{user.pk}", {"type": "heartbeat.pong", "seq": 8})
    assert (await socket.receive_json_from(timeout=5))["seq"] == 8
    await socket.disconnect()


async def test_anonymous_is_closed_with_4401(redis_url):
    socket = communicator()
    connected, code = await socket.connect()
    assert not connected and code == 4401


async def test_user_without_a_role_is_closed_with_4403(redis_url):
    from channels.db import database_sync_to_async

    user = await database_sync_to_async(UserFactory)()
    socket = communicator(await database_sync_to_async(session_cookie)(user))
    connected, code = await socket.connect()
    assert not connected and code == 4403


async def test_foreign_origin_is_refused(redis_url):
    from channels.db import database_sync_to_async

    user = await database_sync_to_async(UserFactory)(roles=["admin"])
    cookie = await database_sync_to_async(session_cookie)(user)
    socket = communicator(cookie, origin=(b"origin", b"https://evil.example"))
    connected, _ = await socket.connect()
    assert not connected
