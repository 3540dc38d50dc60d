"""The no-loss live stream: numbered items persisted first, published to a Channels group after commit,
and a consumer that joins the group, backfills from the database, then sends live items in batches.

A stream is named (`audit`, later `job-<id>`); each item carries a `seq` that increases by one along
the stream, in commit order (a gap in what arrives live is filled from the database).
Client protocol:
  -> {"type": "subscribe", "after": <last seq the client has, 0 for all>, "status": <optional: the status it shows>}
  <- {"type": "items", "items": [...]}          backlog pages, then live batches (<= ~30 messages/s)
  <- {"type": "caught_up", "seq": <last seq>}  once the backlog is sent
  <- {"type": "status", "status": <status>}    a stream with a status (a job's) that differs from what the client
                                               said it shows, sent at each check of the head and before the end
  <- {"type": "end", "seq": <final seq>}       the stream is over (a finished job) and every item up to it was sent
A client that leaves sent bytes unread for STREAM_SOCKET_STALL_SECONDS is closed with 4008 (console/socket_backlog.py
sees them under daphne): it reconnects with its last seq like after any drop, and the backfill catches it up.
The server drops items at or below what it already sent; the page drops duplicates by seq too, so a
reload or a reconnect with the last seq loses nothing and repeats nothing.

Live messages can be lost (channels-redis drops a group message for a channel over capacity, silently; Redis
may be away at a publish). A gap is filled when a later item reveals it; a lost tail, which nothing later
reveals, is found by the idle check: a subscriber that received nothing for STREAM_IDLE_CHECK_MS asks the
database for the stream's committed head and sends what it lacks. So every subscriber converges to what was
committed, and to the end marker of a stream that is over. Items filled in are counted (console.stream_metrics).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from typing import NamedTuple

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from console import stream_metrics
from console.consumers import ConsoleConsumer
from console.socket_backlog import SCOPE_KEY as BACKLOG_PROBE
from console.stream_db import database_sync_to_async

logger = logging.getLogger(__name__)


CLOSE_TOO_SLOW = 4008  # the client stopped taking what was sent: reconnect with the last seq and catch up
PUBLISH_QUIET_SECONDS = 60.0  # how long a publisher that never reached Redis logs its failures at debug only


def group_name(stream: str) -> str:
    return f"stream.{stream}"


class _Publisher:
    """One event loop in a daemon thread per process, sending messages one after another in the order
    they were published, so publishing from sync code neither blocks the caller nor opens a Redis
    connection per message (channels-redis keeps its pools per loop)."""

    def __init__(self) -> None:
        stream_metrics.watch_over_capacity()
        self.pid = os.getpid()
        # Until a first publish gets through (and for at most PUBLISH_QUIET_SECONDS), a failure is start-up: make
        # run's migrate and first audit events come before the private redis-server has made its socket.
        self.quiet_until = time.monotonic() + PUBLISH_QUIET_SECONDS
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
                level = logging.DEBUG if time.monotonic() < self.quiet_until else logging.WARNING
                logger.log(level, "live stream publish to %s failed: %s", group, exc)
                stream_metrics.count(stream_metrics.PUBLISH_FAILED)
            else:
                self.quiet_until = 0.0  # Redis answered: from now on a failure is news
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


def publish_end_on_commit(stream: str, seq: int) -> None:
    """After commit: tell subscribers the stream is over at `seq` (a hint: each checks the database before it
    sends the end marker, and the idle check finds the end when this message is lost)."""
    if get_channel_layer() is None:
        return
    transaction.on_commit(lambda: _get_publisher().put(group_name(stream), {"type": "stream.end", "seq": seq}, None))


class StreamHead(NamedTuple):
    """The highest committed seq of a stream, and whether the stream is over (nothing will follow it)."""

    seq: int
    ended: bool = False
    status: str = ""  # what the stream belongs to is in this state now (a job's status); "" for none


def _contiguous(items: list[dict], after: int) -> bool:
    expected = after + 1
    for item in items:
        if item["seq"] != expected:
            return False
        expected += 1
    return True


class StreamConsumer(ConsoleConsumer):
    """Base for live streams. Subclasses name the stream, read the backlog and the committed head."""

    min_interval = 1 / 30  # at most ~30 messages a second per stream
    backlog_page = 500
    recheck_seconds = 5.0  # how stale a permission may get while items flow (one query per stream per period)

    def stream(self) -> str:
        raise NotImplementedError

    def backlog(self, after: int, limit: int) -> list[dict]:
        """Items with seq > after, ascending, at most limit (runs in a thread: may use the ORM)."""
        raise NotImplementedError

    def head(self) -> StreamHead:
        """The stream's committed head: every item up to its seq is readable by `backlog` (runs in a thread)."""
        raise NotImplementedError

    async def joined(self) -> None:
        self.subscribed = False
        self.live = False
        self.ended = False
        self.last_sent = 0
        self.pending: list[dict] = []
        self.flush_task: asyncio.Task | None = None
        self.idle_task: asyncio.Task | None = None
        self.backlog_task: asyncio.Task | None = None
        probe = self.scope.get(BACKLOG_PROBE)
        if probe is not None and settings.STREAM_SOCKET_STALL_SECONDS > 0:
            self.backlog_task = asyncio.create_task(self._watch_backlog(probe))
        self.sending = asyncio.Lock()  # one batch at a time, so last_sent only grows
        self.last_send_time = 0.0
        self.last_heard = time.monotonic()  # the last live message, or the last check of the head
        self.checked_at = time.monotonic()
        self.revoked = False
        self.status_shown: str | None = None  # the status the client shows; None: it asked for none

    async def disconnect(self, code) -> None:
        if getattr(self, "subscribed", False):
            await self.channel_layer.group_discard(group_name(self.stream()), self.channel_name)
        tasks = ("flush_task", "idle_task", "backlog_task")
        for task in (getattr(self, name, None) for name in tasks):
            if task:
                task.cancel()

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("type") != "subscribe" or self.subscribed:
            await self.send_json({"type": "error", "detail": 'send one {"type": "subscribe", "after": <seq>}'})
            return
        try:
            self.last_sent = max(0, int(content.get("after") or 0))
        except (TypeError, ValueError):
            await self.send_json({"type": "error", "detail": "after must be a number"})
            return
        if isinstance(content.get("status"), str):
            self.status_shown = content["status"][:40]
        # Join first, then backfill: an item committed meanwhile arrives live and is dropped as a duplicate
        # if the backlog already had it; none can fall between the two.
        await self.channel_layer.group_add(group_name(self.stream()), self.channel_name)
        self.subscribed = True
        async with self.sending:
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
        await self._converge()  # an ended stream says so at once
        self.last_heard = time.monotonic()
        self.idle_task = asyncio.create_task(self._watch_idle())
        await self._schedule_flush()

    async def stream_items(self, event) -> None:
        if self.revoked:
            return
        self.last_heard = time.monotonic()
        self.pending.extend(event["items"])
        if self.live:
            await self._schedule_flush()

    async def stream_end(self, event) -> None:
        if self.live and not (self.revoked or self.ended):
            await self._converge()

    async def _schedule_flush(self) -> None:
        if self.pending and (self.flush_task is None or self.flush_task.done()):
            self.flush_task = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        wait = self.last_send_time + self.min_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        async with self.sending:
            items, self.pending = self.pending, []
            fresh = sorted(
                {item["seq"]: item for item in items if item["seq"] > self.last_sent}.values(),
                key=lambda item: item["seq"],
            )
            if fresh and not _contiguous(fresh, self.last_sent):
                # Live items can overtake each other (several publishers) or be lost on the way; everything
                # published was committed first, so the database fills the gap.
                received = len(fresh)
                fresh = await self._backfill_through(fresh[-1]["seq"])
                await self._count_backfilled(len(fresh) - received)
            if fresh:
                await self._send(fresh)
        if self.pending:
            self.flush_task = asyncio.create_task(self._flush_later())

    async def _watch_idle(self) -> None:
        """While nothing arrives live, check the committed head every STREAM_IDLE_CHECK_MS: a lost tail is
        found and sent, and an ended stream gets its end marker."""
        idle = max(0.05, settings.STREAM_IDLE_CHECK_MS / 1000)
        while not (self.revoked or self.ended):
            await asyncio.sleep(max(0.01, self.last_heard + idle - time.monotonic()))
            flushing = self.flush_task is not None and not self.flush_task.done()
            if time.monotonic() - self.last_heard >= idle and not flushing:
                try:
                    await self._converge()
                except Exception:  # the socket went away mid-send, the database blinked: check again later
                    logger.exception("stream %s: the idle check failed", self.stream())
                self.last_heard = time.monotonic()

    async def _watch_backlog(self, probe) -> None:
        """Close the socket once its client has left bytes unread for STREAM_SOCKET_STALL_SECONDS (or more than
        STREAM_SOCKET_BACKLOG_BYTES wait): the server would otherwise hold every live batch for it, in memory and in
        order, and a client reading slowly would work through them one by one. It reconnects with its last seq
        and the backfill brings the rest in a few large messages. A client that keeps up leaves nothing unread
        between two checks, whatever the rate."""
        stall = settings.STREAM_SOCKET_STALL_SECONDS
        interval = min(1.0, stall / 4)
        behind_since: float | None = None
        while True:
            await asyncio.sleep(interval)
            unsent = probe()
            if unsent is None:  # the connection is gone
                return
            now = time.monotonic()
            if unsent == 0:
                behind_since = None
                continue
            behind_since = behind_since or now
            if now - behind_since >= stall or unsent > settings.STREAM_SOCKET_BACKLOG_BYTES:
                logger.info("stream %s: closing a socket whose client left %d bytes unread", self.stream(), unsent)
                self.revoked, self.pending = True, []  # nothing more goes out on this socket
                await self.close(code=CLOSE_TOO_SLOW)
                await sync_to_async(stream_metrics.count)(stream_metrics.SLOW_SOCKETS_CLOSED)
                return

    async def _converge(self) -> None:
        """Send what was committed up to the head and not sent yet; the end marker once the stream is over."""
        async with self.sending:
            if self.revoked or self.ended:
                return
            head = await database_sync_to_async(self.head)()
            if head.seq > self.last_sent:
                items = await self._backfill_through(head.seq)
                if items:
                    await self._count_backfilled(len(items))
                    await self._send(items)
            if self.status_shown is not None and head.status and head.status != self.status_shown:
                # The page's badge follows the status the moment it is seen, the outcome before the end marker.
                self.status_shown = head.status
                await self.send_json({"type": "status", "status": head.status})
            if head.ended and self.last_sent >= head.seq and not self.revoked:
                self.ended = True
                await self.send_json({"type": "end", "seq": head.seq})

    async def _count_backfilled(self, amount: int) -> None:
        if amount > 0:
            await sync_to_async(stream_metrics.count)(stream_metrics.ITEMS_BACKFILLED, amount)

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
        for chunk in _chunks(items):
            if self.revoked:
                return
            if time.monotonic() - self.checked_at >= self.recheck_seconds:
                if not await self.still_allowed():
                    self.revoked, self.pending = True, []  # closed: nothing more goes out on this socket
                    return
                self.checked_at = time.monotonic()
            await self.send_json({"type": "items", "items": chunk})
            self.last_sent = chunk[-1]["seq"]
            self.last_send_time = time.monotonic()


MESSAGE_BUDGET = 512 * 1024  # daphne refuses a websocket message over 1 MiB (and the send then kills the task)


def _size(item: dict) -> int:
    """A cheap upper estimate of an item's JSON size (a non-ASCII character may become a 6-byte escape)."""
    text = item.get("text") or ""
    size = 200 + (len(text) if text.isascii() else 6 * len(text))
    data = item.get("data")
    return size + (len(json.dumps(data)) if data else 0)


def _chunks(items: list[dict]) -> list[list[dict]]:
    """Items in messages under MESSAGE_BUDGET (a backfill of thousands of lines is several messages)."""
    chunks, chunk, size = [], [], 0
    for item in items:
        item_size = _size(item)
        if chunk and size + item_size > MESSAGE_BUDGET:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        chunks.append(chunk)
    return chunks
