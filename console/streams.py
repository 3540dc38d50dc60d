"""The no-loss live stream: numbered items persisted first, published to a Channels group after commit,
and a consumer that joins the group, backfills from the database, then sends live items in batches.

A stream is named (`audit`, later `job-<id>`); each item carries a `seq` increasing along the stream.
Client protocol:
  -> {"type": "subscribe", "after": <last seq the client has, 0 for all>}
  <- {"type": "items", "items": [...]}          backlog pages, then live batches (<= ~30 messages/s)
  <- {"type": "caught_up", "seq": <last seq>}  once the backlog is sent
The server drops items at or below what it already sent; the page drops duplicates by seq too, so a
reload or a reconnect with the last seq loses nothing and repeats nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from console.consumers import ConsoleConsumer

logger = logging.getLogger(__name__)


def group_name(stream: str) -> str:
    return f"stream.{stream}"


class _PublisherLoop:
    """One event loop in a daemon thread per process, so publishing from sync code neither blocks the
    caller nor opens a Redis connection per message (channels-redis keeps its pools per loop)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="stream-publisher", daemon=True).start()


_publisher: _PublisherLoop | None = None
_publisher_lock = threading.Lock()


def _publisher_loop() -> asyncio.AbstractEventLoop:
    global _publisher
    with _publisher_lock:
        if _publisher is None or _publisher.pid != os.getpid():  # a forked worker gets its own
            _publisher = _PublisherLoop()
        return _publisher.loop


def _log_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("live stream publish failed (subscribers will backfill): %s", future.exception())


def publish(stream: str, items: list[dict], *, wait: float | None = None) -> None:
    """Send committed items to the stream's live subscribers (best effort: they backfill).

    Returns at once; with `wait`, blocks up to that many seconds until Redis took the message."""
    layer = get_channel_layer()
    if layer is None or not items:
        return
    message = {"type": "stream.items", "items": items}
    future = asyncio.run_coroutine_threadsafe(layer.group_send(group_name(stream), message), _publisher_loop())
    future.add_done_callback(_log_failure)
    if wait is not None:
        future.result(timeout=wait)


def publish_on_commit(stream: str, items: list[dict]) -> None:
    transaction.on_commit(lambda: publish(stream, items))


class StreamConsumer(ConsoleConsumer):
    """Base for live streams. Subclasses name the stream and read the backlog."""

    min_interval = 1 / 30  # at most ~30 messages a second per stream
    backlog_page = 500

    def stream(self) -> str:
        raise NotImplementedError

    def backlog(self, after: int, limit: int) -> list[dict]:
        """Items with seq > after, ascending, at most limit (runs in a thread: may use the ORM)."""
        raise NotImplementedError

    async def joined(self) -> None:
        self.subscribed = False
        self.live = False
        self.last_sent = 0
        self.pending: list[dict] = []
        self.flush_task: asyncio.Task | None = None
        self.last_send_time = 0.0

    async def disconnect(self, code) -> None:
        if getattr(self, "subscribed", False):
            await self.channel_layer.group_discard(group_name(self.stream()), self.channel_name)
        if getattr(self, "flush_task", None):
            self.flush_task.cancel()

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("type") != "subscribe" or self.subscribed:
            await self.send_json({"type": "error", "detail": 'send one {"type": "subscribe", "after": <seq>}'})
            return
        try:
            self.last_sent = max(0, int(content.get("after") or 0))
        except (TypeError, ValueError):
            await self.send_json({"type": "error", "detail": "after must be a number"})
            return
        # Join first, then backfill: an item committed meanwhile arrives live and is dropped as a duplicate
        # if the backlog already had it; none can fall between the two.
        await self.channel_layer.group_add(group_name(self.stream()), self.channel_name)
        self.subscribed = True
        while True:
            items = await database_sync_to_async(self.backlog)(self.last_sent, self.backlog_page)
            if items:
                await self._send(items)
            if len(items) < self.backlog_page:
                break
        self.live = True
        await self.send_json({"type": "caught_up", "seq": self.last_sent})
        await self._schedule_flush()

    async def stream_items(self, event) -> None:
        self.pending.extend(event["items"])
        if self.live:
            await self._schedule_flush()

    async def _schedule_flush(self) -> None:
        if self.pending and (self.flush_task is None or self.flush_task.done()):
            self.flush_task = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        wait = self.last_send_time + self.min_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        items, self.pending = self.pending, []
        fresh = sorted((item for item in items if item["seq"] > self.last_sent), key=lambda item: item["seq"])
        if fresh:
            await self._send(fresh)
        if self.pending:
            self.flush_task = asyncio.create_task(self._flush_later())

    async def _send(self, items: list[dict]) -> None:
        await self.send_json({"type": "items", "items": items})
        self.last_sent = items[-1]["seq"]
        self.last_send_time = time.monotonic()
