"""A live socket that hears nothing for a while stays open: the channel layer's waits for messages (BZPOPMIN calls of
2 s, console/channel_layer.py) end inside redis-py's 5 s read timeout. With channels_redis's 5 s waits every idle job
log, audit or heartbeat socket failed after 5 s (daphne closed it with 1011, "Timeout reading from ...") and the page
reconnected (seen in issue 20's agent-network-loss fault: 5 connections for one client in 35 s)."""

from __future__ import annotations

import asyncio
import time

from channels.layers import get_channel_layer

from tests.support.aio import run_async

QUIET_S = 7  # past several waits and redis-py's 5 s read timeout


async def _wait_quietly() -> tuple[str, float]:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    started = time.monotonic()
    try:
        await asyncio.wait_for(layer.receive(channel), QUIET_S)
    except TimeoutError as exc:  # asyncio's own, at QUIET_S: the receive was still waiting, as it should
        return f"{type(exc).__module__}.{type(exc).__name__}: {exc}", time.monotonic() - started
    return "a message arrived on a channel nobody sends to", time.monotonic() - started


def test_a_subscriber_waiting_with_nothing_to_receive_is_not_failed_by_a_redis_read_timeout(redis_url):
    outcome, waited = run_async(_wait_quietly())
    assert outcome == "builtins.TimeoutError: " and waited >= QUIET_S - 0.5, (outcome, round(waited, 1))
