"""Whether Redis answers, asked at most every few seconds per process.

Redis carries the live streams, the task queue and the cache. Without it the console keeps answering from the
database (degraded): pages show a banner saying so, /healthz reports it, and work started meanwhile waits as
pending jobs that the reaper sends once Redis is back."""

from __future__ import annotations

import threading
import time

import redis
from django.conf import settings

CHECK_EVERY_SECONDS = 3.0
PING_TIMEOUT_SECONDS = 0.5  # a page waits at most this long for the answer, once per CHECK_EVERY_SECONDS

_lock = threading.Lock()
_state = {"at": float("-inf"), "up": True, "url": ""}
_clients: dict[str, redis.Redis] = {}


def _ping(url: str) -> bool:
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(
            url, socket_timeout=PING_TIMEOUT_SECONDS, socket_connect_timeout=PING_TIMEOUT_SECONDS
        )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def redis_available() -> bool:
    """Whether Redis answered a PING within PING_TIMEOUT_SECONDS at the last check (one check per interval)."""
    url = settings.REDIS_URL
    now = time.monotonic()
    if _state["url"] == url and now - _state["at"] < CHECK_EVERY_SECONDS:
        return _state["up"]
    with _lock:
        if _state["url"] != url or time.monotonic() - _state["at"] >= CHECK_EVERY_SECONDS:
            _state.update(up=_ping(url), at=time.monotonic(), url=url)
        return _state["up"]
