"""A live stream followed the way the browser follows it, over a real socket to a real ASGI server.

`StreamWatcher` subscribes to /ws/jobs/<id>/ (or /ws/audit/) with the last seq it holds, keeps every item by
seq, and when the socket drops (server killed, Redis gone, ...) reconnects with that seq, as
static/js/stream.js does. A fault test starts one before injecting its fault and asserts afterwards that the
watcher holds 1..N with no gap, where N is what the database holds: 0 lines lost at the client.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import aiohttp
from django.conf import settings
from django.test import Client


def session_cookie(user) -> str:
    """A session for `user` in the database the live server reads (the test's data must be committed)."""
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


@dataclass
class StreamWatcher:
    base_url: str  # http://127.0.0.1:<port> of the live ASGI server
    path: str  # /ws/jobs/<id>/
    cookie: str
    reconnect_delay: float = 0.2
    items: dict[int, dict] = field(default_factory=dict)
    connections: int = 0
    ended_seq: int | None = None
    errors: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._follow()), daemon=True)

    # -- control --------------------------------------------------------------------------------------
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

    def wait_for(self, seq: int, timeout: float) -> bool:
        """Whether the client holds 1..seq within timeout seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last_seq >= seq:
                return True
            time.sleep(0.05)
        return self.last_seq >= seq

    def wait_for_end(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ended_seq is not None and self.last_seq >= self.ended_seq:
                return True
            time.sleep(0.05)
        return False

    # -- the socket -----------------------------------------------------------------------------------
    async def _follow(self) -> None:
        ws_url = self.base_url.replace("http://", "ws://", 1) + self.path
        headers = {"Origin": self.base_url, "Cookie": f"{settings.SESSION_COOKIE_NAME}={self.cookie}"}
        while not self._stop.is_set() and self.ended_seq is None:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.ws_connect(
                        ws_url, headers=headers, heartbeat=5, timeout=aiohttp.ClientWSTimeout(ws_close=2)
                    ) as socket,
                ):
                    self.connections += 1
                    await socket.send_json({"type": "subscribe", "after": self.last_seq})
                    await self._read(socket)
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                self.errors.append(f"{type(error).__name__}: {error}")
            if not self._stop.is_set() and self.ended_seq is None:
                await asyncio.sleep(self.reconnect_delay)

    async def _read(self, socket) -> None:
        while not self._stop.is_set():
            try:
                message = await socket.receive(timeout=0.5)
            except TimeoutError:
                continue
            if message.type != aiohttp.WSMsgType.TEXT:
                return  # closed or errored: reconnect
            data = message.json()
            if data.get("type") == "items":
                for item in data["items"]:
                    self.items.setdefault(item["seq"], item)
            elif data.get("type") == "status":
                self.statuses.append(data["status"])
            elif data.get("type") == "end":
                self.ended_seq = data["seq"]
            elif data.get("type") == "error":
                self.errors.append(str(data.get("detail")))
