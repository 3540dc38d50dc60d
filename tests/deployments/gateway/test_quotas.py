"""Gateway quotas against the real Redis: exact under concurrency, all or nothing, sliding windows with a correct
Retry-After, tokens counted as they stream. Window tests pass a fake clock (`now`) instead of waiting."""

from __future__ import annotations

import asyncio
import inspect
from datetime import timedelta

import pytest
import redis
import redis.asyncio
from django.utils import timezone

from deployments.gateway import quotas
from deployments.gateway.models import InferenceKey, TeamQuota
from deployments.gateway.quotas import Scope, admit, charge, scope_for
from tests.factories.accounts import TeamFactory, UserFactory
from tests.support.aio import run_async

T0 = 1_800_000_000.25  # a fake clock, a quarter second into a bucket


def _quota_keys(url: str) -> list[bytes]:
    return list(redis.Redis.from_url(url).scan_iter(f"{quotas.PREFIX}*", count=1000))


def _flush(url: str) -> None:
    keys = _quota_keys(url)
    if keys:
        redis.Redis.from_url(url).delete(*keys)


def _in_loop(test):
    """Run an async test in an event loop of its own thread (tests.support.aio): browser tests earlier in the suite
    leave a loop on the main thread. The test gets its own Redis client and starts and ends with no quota keys."""

    def run(redis_url):
        async def body():
            connection = redis.asyncio.Redis.from_url(redis_url)
            try:
                wanted = inspect.signature(test).parameters
                await test(client=connection, **({"redis_url": redis_url} if "redis_url" in wanted else {}))
            finally:
                await connection.aclose()

        _flush(redis_url)
        try:
            run_async(body())
        finally:
            _flush(redis_url)

    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


async def _total(connection, level: str, owner_id: int, name: str) -> int:
    counts, _ = quotas.redis_keys(level, owner_id, name)
    return int(await connection.hget(counts, "total") or 0)


def _scope(key_id: int = 1, team_id: int | None = None, key: dict | None = None, team: dict | None = None) -> Scope:
    return Scope(key_id=key_id, key_limits=key or {}, team_id=team_id, team_limits=team or {})


@_in_loop
async def test_fifty_concurrent_callers_get_exactly_the_limit(client):
    """The issue's check: 50 callers at once against 100 requests/minute; exactly 100 pass in the window."""
    scope = _scope(key={"rpm": 100})

    async def caller() -> list:
        # Each caller awaits its own answers; the 50 run side by side on their own connections.
        return [await admit(client, scope, 10) for _ in range(4)]

    results = [r for batch in await asyncio.gather(*(caller() for _ in range(50))) for r in batch]

    refused = [r for r in results if r is not None]
    assert len(results) - len(refused) == 100
    assert len(refused) == 100
    assert {(r.limit, r.level) for r in refused} == {("rpm", "key")}
    assert all(1 <= r.retry_after <= 61 for r in refused)
    assert "requests per min (RPM)" in refused[0].message and "Limit 100, Used 100" in refused[0].message
    assert await _total(client, "key", 1, "rpm") == 100  # the refused ones counted nothing


@_in_loop
async def test_team_limit_is_shared_by_the_keys_of_the_team(client):
    first = _scope(key_id=1, team_id=7, key={"rpm": 100}, team={"rpm": 10})
    second = _scope(key_id=2, team_id=7, key={"rpm": 100}, team={"rpm": 10})

    for _ in range(6):
        assert await admit(client, first, 1, now=T0) is None
    for _ in range(4):
        assert await admit(client, second, 1, now=T0) is None
    refusal = await admit(client, second, 1, now=T0)
    assert (refusal.limit, refusal.level) == ("rpm", "team")
    assert "this key's team on requests per min (RPM): Limit 10, Used 10" in refusal.message
    assert (await admit(client, first, 1, now=T0)).level == "team"
    assert await _total(client, "key", 1, "rpm") == 6
    assert await _total(client, "key", 2, "rpm") == 4


@_in_loop
async def test_a_refused_request_counts_nothing_anywhere(client):
    scope = _scope(team_id=3, key={"rpm": 100, "tpm": 1000}, team={"rpm": 100, "tpm": 500})
    assert await admit(client, scope, 400, now=T0) is None

    refusal = await admit(client, scope, 200, now=T0)  # the key would allow it, the team would not
    assert (refusal.limit, refusal.level) == ("tpm", "team")
    assert "Limit 500, Used 400, Requested 200" in refusal.message
    too_large = await admit(client, scope, 600, now=T0)
    assert too_large.message.startswith("Request too large for this key's team on tokens per min (TPM)")
    assert [await _total(client, *c) for c in [("key", 1, "rpm"), ("key", 1, "tpm"), ("team", 3, "tpm")]] == [
        1,
        400,
        400,
    ]

    assert await admit(client, scope, 100, now=T0) is None  # exactly up to the limit
    assert await _total(client, "team", 3, "tpm") == 500
    assert await _total(client, "key", 1, "rpm") == 2


@_in_loop
async def test_tokens_per_minute_crossed_mid_stream_ends_it_and_counts_what_was_produced(client):
    scope = _scope(key={"tpm": 100})
    assert await admit(client, scope, 40, now=T0) is None

    answers = [await charge(client, scope, 5, now=T0 + 1) for _ in range(13)]  # 40 + 13 * 5 = 105

    assert answers[:12] == [None] * 12  # 100 tokens: at the limit, not over it
    refusal = answers[12]
    assert (refusal.limit, refusal.level) == ("tpm", "key")
    assert "tokens per min (TPM) during the response: Limit 100, Used 105" in refusal.message
    assert await _total(client, "key", 1, "tpm") == 105
    # The prompt's 40 tokens (bucket ending at T0 + 0.75) leave at T0 + 60.75; then 65 are counted and 1 fits.
    assert refusal.retry_after == 60
    assert (await admit(client, scope, 1, now=T0 + 60)).limit == "tpm"
    assert await admit(client, scope, 1, now=T0 + 61) is None


@_in_loop
async def test_tokens_per_day(client):
    scope = _scope(team_id=5, key={"tpm": 10_000}, team={"tpd": 1000})
    assert await admit(client, scope, 600, now=T0) is None
    assert await charge(client, scope, 300, now=T0 + 10) is None
    later = T0 + 2 * 3600

    refusal = await admit(client, scope, 200, now=later)
    assert (refusal.limit, refusal.level) == ("tpd", "team")
    assert "tokens per day (TPD): Limit 1000, Used 900, Requested 200. Please try again in 22h1m" in refusal.message
    # T0's minute bucket ends within 60 s of T0 and is counted for one day more.
    assert 22 * 3600 < refusal.retry_after <= 22 * 3600 + 60
    assert (await admit(client, scope, 200, now=later + refusal.retry_after - 1)).limit == "tpd"
    assert await admit(client, scope, 200, now=later + refusal.retry_after) is None
    # Crossing the day limit while streaming.
    assert (await charge(client, scope, 801, now=later + refusal.retry_after)).limit == "tpd"
    assert await _total(client, "team", 5, "tpd") == 1001


@_in_loop
async def test_window_slides_and_retry_after_is_exact(client):
    scope = _scope(key={"rpm": 100})
    for _ in range(50):
        assert await admit(client, scope, 1, now=T0) is None
    for _ in range(50):
        assert await admit(client, scope, 1, now=T0 + 20) is None

    refusal = await admit(client, scope, 1, now=T0 + 30)
    # T0 + 0.25 lies in the bucket ending at T0 + 0.75; counted a full minute after that, to T0 + 60.75.
    assert refusal.retry_after == 31
    assert await admit(client, scope, 1, now=T0 + 60) is not None

    admitted = [await admit(client, scope, 1, now=T0 + 61) for _ in range(51)]
    assert admitted[:50] == [None] * 50  # the first 50 left the window, the second 50 are still in it
    assert admitted[50].retry_after == 20  # the T0 + 20 bucket leaves at T0 + 80.75


@_in_loop
async def test_counters_expire_so_redis_does_not_grow(client, redis_url):
    scope = _scope(team_id=2, key={"rpm": 5, "tpm": 100}, team={"tpd": 1000})
    assert await admit(client, scope, 10) is None
    assert await charge(client, scope, 10) is None

    sync = redis.Redis.from_url(redis_url)
    ttls = {key.decode(): sync.pttl(key) for key in _quota_keys(redis_url)}
    assert len(ttls) == 6  # a hash and a bucket set per limit
    minute, day = 61_000, 86_460_000
    assert all(0 < ttl <= (day if ":tpd" in key else minute) for key, ttl in ttls.items()), ttls


@_in_loop
async def test_no_limits_no_redis_work(client, redis_url):
    assert await admit(client, _scope(team_id=4), 1000) is None
    assert await charge(client, _scope(team_id=4, key={"rpm": 1}), 1000) is None  # rpm is not about tokens
    assert _quota_keys(redis_url) == []


@pytest.mark.django_db
def test_scope_for_reads_the_key_and_its_team_quota():
    team = TeamFactory()
    TeamQuota.objects.create(team=team, requests_per_minute=30, tokens_per_day=9000)
    expires = timezone.now() + timedelta(days=1)
    user = UserFactory()
    key = InferenceKey.objects.create(
        name="app", prefix="llk_x", digest="d1", user=user, team=team, expires_at=expires, tokens_per_minute=500
    )
    loner = InferenceKey.objects.create(name="solo", prefix="llk_y", digest="d2", user=user, expires_at=expires)

    assert scope_for(key) == Scope(
        key_id=key.pk, key_limits={"tpm": 500}, team_id=team.pk, team_limits={"rpm": 30, "tpd": 9000}
    )
    assert scope_for(loner) == Scope(key_id=loner.pk, key_limits={}, team_id=None, team_limits={})
