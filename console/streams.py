"""The no-loss live stream: numbered items persisted first, published to a Channels group after commit,
and a consumer that joins the group, backfills from the database, then sends live items in batches.

A stream is named (`audit`, later `job-<id>`); each item carries a `seq` that increases by one along
the stream, in commit order (a gap in what arrives live is filled from the database).
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


class _Publisher:
    """One event loop in a daemon thread per process, sending messages one after another in the order
    they were published, so publishing from sync code neither blocks the caller nor opens a Redis
    connection per message (channels-redis keeps its pools per loop)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.queue: asyncio.Queue | None = None
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), name="stream-publisher", daemon=True).start()
        ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.queue = asyncio.Queue()
        self.loop.call_soon(ready.set)
        self.loop.run_until_complete(self._drain())

    async def _drain(self) -> None:
        while True:
            group, message, done = await self.queue.get()
            try:
                await get_channel_layer().group_send(group, message)
            except Exception as exc:  # subscribers backfill from the database
                logger.warning("live stream publish to %s failed: %s", group, exc)
            finally:
                if done is not None:
                    done.set()

    def put(self, group: str, message: dict, done: threading.Event | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (group, message, done))


_publisher: _Publisher | None = None
_publisher_lock = threading.Lock()


def _get_publisher() -> _Publisher:
    global _publisher
    with _publisher_lock:
        if _publisher is None or _publisher.pid != os.getpid():  # a forked worker gets its own
            _publisher = _Publisher()
        return _publisher


def publish(stream: str, items: list[dict], *, wait: float | None = None) -> None:
    """Send committed items to the stream's live subscribers (best effort: they backfill).

    Returns at once; with `wait`, blocks up to that many seconds until the message was handed to Redis."""
    if get_channel_layer() is None or not items:
        return
    done = threading.Event() if wait is not None else None
    _get_publisher().put(group_name(stream), {"type": "stream.items", "items": items}, done)
    if done is not None:
        done.wait(wait)


def publish_on_commit(stream: str, items: list[dict]) -> None:
    transaction.on_commit(lambda: publish(stream, items))


def _contiguous(items: list[dict], after: int) -> bool:
    expected = after + 1
    for item in items:
        if item["seq"] != expected:
            return False
        expected += 1
    return True


class StreamConsumer(ConsoleConsumer):
    """Base for live streams. Subclasses name the stream and read the backlog."""

    min_interval = 1 / 30  # at most ~30 messages a second per stream
    backlog_page = 500
    recheck_seconds = 5.0  # how stale a permission may get while items flow (one query per stream per period)

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
        self.checked_at = time.monotonic()
        self.revoked = False

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
        while not self.revoked:
            items = await database_sync_to_async(self.backlog)(self.last_sent, self.backlog_page)
            if items:
                await self._send(items)
            if len(items) < self.backlog_page:
                break
        if self.revoked:
            return
        self.live = True
        await self.send_json({"type": "caught_up", "seq": self.last_sent})
        await self._schedule_flush()

    async def stream_items(self, event) -> None:
        if self.revoked:
            return
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
        fresh = sorted(
            {item["seq"]: item for item in items if item["seq"] > self.last_sent}.values(), key=lambda item: item["seq"]
        )
        if fresh and not _contiguous(fresh, self.last_sent):
            # Live items can overtake each other (several publishers); everything published was
            # committed first, so the database fills the gap.
            fresh = await self._backfill_through(fresh[-1]["seq"])
        if fresh:
            await self._send(fresh)
        if self.pending:
            self.flush_task = asyncio.create_task(self._flush_later())

    async def _backfill_through(self, seq: int) -> list[dict]:
        items: list[dict] = []
        after = self.last_sent
        while after < seq:
            page = await database_sync_to_async(self.backlog)(after, self.backlog_page)
            if not page:
                break
            items.extend(page)
            after = page[-1]["seq"]
        return items

    async def _send(self, items: list[dict]) -> None:
        if self.revoked:
            return
        if time.monotonic() - self.checked_at >= self.recheck_seconds:
            if not await self.still_allowed():
                self.revoked, self.pending = True, []  # closed: nothing more goes out on this socket
                return
            self.checked_at = time.monotonic()
        await self.send_json({"type": "items", "items": items})
        self.last_sent = items[-1]["seq"]
        self.last_send_time = time.monotonic()
