"""The cache backend: Django's Redis cache that degrades to a miss while Redis is away.

What the console caches (the last audit verification's result, ...) can be recomputed or shown as unknown; a
page must not fail or hang because Redis restarts or is unreachable. Reads answer the default, writes are
dropped, both logged; the socket timeouts (settings.CACHES) bound the wait, and after one call has waited them out
the next SKIP_AFTER_FAILURE_SECONDS answer at once (a page making several cache calls waits one timeout, not one
per call)."""

from __future__ import annotations

import functools
import logging
import time

import redis
from django.core.cache.backends.redis import RedisCache

logger = logging.getLogger(__name__)

SKIP_AFTER_FAILURE_SECONDS = 5.0
_down_until = 0.0  # per process: until then calls answer their fallback without asking Redis


def _tolerant(method, fallback):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        global _down_until
        if time.monotonic() < _down_until:
            return fallback(*args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            _down_until = time.monotonic() + SKIP_AFTER_FAILURE_SECONDS
            logger.warning("cache %s skipped, Redis unavailable: %s", method.__name__, exc)
            return fallback(*args, **kwargs)

    return call


def _default(key, default=None, *args, **kwargs):
    return default


class TolerantRedisCache(RedisCache):
    get = _tolerant(RedisCache.get, _default)
    get_many = _tolerant(RedisCache.get_many, lambda *a, **k: {})
    has_key = _tolerant(RedisCache.has_key, lambda *a, **k: False)
    set = _tolerant(RedisCache.set, lambda *a, **k: None)
    set_many = _tolerant(RedisCache.set_many, lambda keys, *a, **k: list(keys))
    add = _tolerant(RedisCache.add, lambda *a, **k: False)
    touch = _tolerant(RedisCache.touch, lambda *a, **k: False)
    delete = _tolerant(RedisCache.delete, lambda *a, **k: False)
    delete_many = _tolerant(RedisCache.delete_many, lambda *a, **k: None)
