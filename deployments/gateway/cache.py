"""What tells running gateway processes to forget what they cached: one Redis counter per kind, bumped by the
console when a key is revoked or changed, or when a deployment's routing changes. A gateway reads the counters
on each call (one round trip) and drops its cache when one moved, so a revocation takes effect at once."""

from __future__ import annotations

import redis
from django.conf import settings

KEYS_GENERATION = "gateway:generation:keys"
ROUTES_GENERATION = "gateway:generation:routes"

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    return _client


def invalidate_keys() -> None:
    """Call after a key is revoked, re-scoped or its limits change (and after a service account is disabled)."""
    _redis().incr(KEYS_GENERATION)


def invalidate_routes() -> None:
    """Call after a deployment's state, endpoint, replicas, adapters or grants change."""
    _redis().incr(ROUTES_GENERATION)
