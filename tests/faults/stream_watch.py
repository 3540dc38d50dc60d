"""A live stream followed the way the browser follows it, over a real socket to a real ASGI server.

`StreamFollower.follow()` is the client: it subscribes to /ws/jobs/<id>/ (or /ws/audit/) with the last seq it
holds, keeps every item by seq, and when the socket drops (server killed, Redis gone, closed as too slow, ...)
reconnects with that seq, as console/assets/console/console.js does. Two ways to run it:

- `StreamWatcher`: one follower in its own thread (a fault test starts one before injecting its fault);
- `StreamCrowd`: many followers in one thread and one event loop (hundreds of sockets without hundreds of threads).

A fault test asserts afterwards that each follower holds 1..N with no gap, where N is what the database holds:
0 lines lost at the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket as sockets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from django.conf import settings
from django.test import Client

from tests.conftest import _test_database_url
from tests.deploy.prometheus_live import ConsoleProcess

SLOW_READER_RCVBUF = 4096  # a slow reader's kernel receive buffer: the server's sends back up into TCP at once


def daphne_env(redis_url: str, **extra: str) -> dict:
    """The environment of a console under daphne on the test database (its data committed by the test)."""
    return dict(
        os.environ,
        DATABASE_URL=_test_database_url(),
        REDIS_URL=redis_url,
        DATA_DIR=str(settings.DATA_DIR),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        **extra,
    )


@contextlib.contextmanager
def live_console(work: Path, redis_url: str) -> Iterator[ConsoleProcess]:
    """The console under daphne, for a client following a live stream through a fault; stopped afterwards."""
    server = ConsoleProcess(work).start(daphne_env(redis_url))
    try:
        yield server
    finally:
        server.stop()


def session_cookie(user) -> str:
    """A session for `user` in the database the live server reads (the test's data must be committed)."""
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _small_receive_buffer(addr_info) -> sockets.socket:
    family, type_, proto, _, _ = addr_info
    sock = sockets.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(sockets.SOL_SOCKET, sockets.SO_RCVBUF, SLOW_READER_RCVBUF)
    return sock


@dataclass
class StreamFollower:
    base_url: str  # http://127.0.0.1:<port> of the live ASGI server
    path: str  # /ws/jobs/<id>/
    cookie: str
    reconnect_delay: float = 0.2  # after a drop; doubled after each failed attempt up to max_reconnect_delay,
    max_reconnect_delay: float = 2.0  # as the page backs off (with a random spread, so a crowd does not stampede)
    start_within: float = 0.0  # the first connection at a random moment within this many seconds (tabs opening)
    # > 0: a slow reader, taking one message off its socket every `read_interval` seconds and letting nothing
    # else in meanwhile (a tiny receive buffer and no read-ahead), so the server meets TCP backpressure.
    read_interval: float = 0.0
    items: dict[int, dict] = field(default_factory=dict)
    received_at: dict[int, float] = field(default_factory=dict)  # seq -> time.time() it first arrived
    duplicates: int = 0  # items that arrived again after the client held them (dropped by seq, as the page does)
    messages: int = 0
    connections: int = 0
    caught_up: bool = False  # the server said the backlog was sent, on the latest connection
    ended_seq: int | None = None
    errors: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    # -- what the client holds ------------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        """The highest seq up to which the client holds every item (what it would send on reconnect)."""
        seq = 0
        while seq + 1 in self.items:
            seq += 1
        return seq

    def missing(self, upto: int) -> list[int]:
        return [seq for seq in range(1, upto + 1) if seq not in self.items]

    @property
    def at_end(self) -> bool:
        """The stream's end marker arrived and every item up to it is held."""
        return self.ended_seq is not None and self.last_seq >= self.ended_seq

    # -- the socket -----------------------------------------------------------------------------------
    async def follow(self, stopped: Callable[[], bool], session: aiohttp.ClientSession | None = None) -> None:
        """Follow until `stopped()` or the end of the stream, reconnecting with the last seq after any drop.
        `session` is shared by the followers of one event loop; a slow reader always makes its own."""
        ws_url = self.base_url.replace("http://", "ws://", 1) + self.path
        headers = {"Origin": self.base_url, "Cookie": f"{settings.SESSION_COOKIE_NAME}={self.cookie}"}
        own = session is None or self.read_interval > 0
        if own:
            connector = aiohttp.TCPConnector(
                limit=0, socket_factory=_small_receive_buffer if self.read_interval > 0 else None
            )
            session = aiohttp.ClientSession(connector=connector)
        delay = self.reconnect_delay
        await asyncio.sleep(random.uniform(0, self.start_within))
        try:
            while not stopped() and self.ended_seq is None:
                try:
                    # A slow reader sends no pings: its own pong would wait behind what it has not read, and it
                    # would drop the socket itself; the server is the one to decide (as with a browser).
                    heartbeat = None if self.read_interval > 0 else 5
                    async with session.ws_connect(
                        ws_url, headers=headers, heartbeat=heartbeat, timeout=aiohttp.ClientWSTimeout(ws_close=2)
                    ) as socket:
                        self.connections += 1
                        self.caught_up = False
                        delay = self.reconnect_delay
                        await socket.send_json({"type": "subscribe", "after": self.last_seq})
                        await self._read(socket, stopped)
                except (TimeoutError, aiohttp.ClientError, OSError) as error:
                    self.errors.append(f"{type(error).__name__}: {error}")
                if not stopped() and self.ended_seq is None:
                    await asyncio.sleep(delay * random.uniform(0.75, 1.25))
                    delay = min(delay * 2, self.max_reconnect_delay)
        finally:
            if own:
                await session.close()

    async def _read(self, socket: aiohttp.ClientWebSocketResponse, stopped: Callable[[], bool]) -> None:
        # aiohttp reads ahead (up to 128 KiB of parsed messages): a slow reader stops its transport between two
        # messages, so bytes leave the kernel only while it has no message left in hand.
        transport = socket._response.connection.transport if self.read_interval > 0 else None
        while not stopped():
            if transport is not None:
                transport.resume_reading()
            try:
                message = await socket.receive(timeout=0.5)
            except TimeoutError:
                continue
            if transport is not None:
                transport.pause_reading()
            if message.type != aiohttp.WSMsgType.TEXT:
                return  # closed or errored: reconnect
            self._take(message.json())
            if transport is not None:
                await asyncio.sleep(self.read_interval)

    def _take(self, data: dict) -> None:
        self.messages += 1
        if data.get("type") == "items":
            now = time.time()
            for item in data["items"]:
                if item["seq"] in self.items:
                    self.duplicates += 1
                    continue
                self.items[item["seq"]] = item
                self.received_at[item["seq"]] = now
        elif data.get("type") == "caught_up":
            self.caught_up = True
        elif data.get("type") == "status":
            self.statuses.append(data["status"])
        elif data.get("type") == "end":
            self.ended_seq = data["seq"]
        elif data.get("type") == "error":
            self.errors.append(str(data.get("detail")))


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@dataclass
class StreamWatcher(StreamFollower):
    """One follower in a thread of its own."""

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self.follow(self._stop.is_set)), daemon=True)

    def start(self) -> StreamWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> StreamWatcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for(self, seq: int, timeout: float) -> bool:
        """Whether the client holds 1..seq within timeout seconds."""
        return _wait(lambda: self.last_seq >= seq, timeout)

    def wait_for_end(self, timeout: float) -> bool:
        return _wait(lambda: self.at_end, timeout)


class StreamCrowd:
    """Many followers in one thread and one event loop, sharing one connection pool (a slow reader keeps its own)."""

    def __init__(self, followers: list[StreamFollower]) -> None:
        self.followers = followers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(follower.follow(self._stop.is_set, session) for follower in self.followers))

    def start(self) -> StreamCrowd:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def __enter__(self) -> StreamCrowd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait(self, predicate: Callable[[StreamFollower], bool], timeout: float) -> bool:
        """Whether every follower satisfies predicate within timeout seconds (read from another thread: the
        followers' counters only grow, so a stale read only delays the answer)."""
        return _wait(lambda: all(predicate(follower) for follower in self.followers), timeout)

    def errors(self) -> list[str]:
        return [error for follower in self.followers for error in follower.errors]
