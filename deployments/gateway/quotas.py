"""Quotas of the inference gateway: requests per minute (rpm), tokens per minute (tpm) and tokens per day (tpd),
per key and per team, counted in Redis by one Lua script so that a check and its increments are one atomic step
shared by every gateway process.

Windows are sliding, counted in buckets: a minute limit in 1-second buckets, a day limit in 1-minute buckets.
Whatever was counted in a bucket stays counted until one whole window has passed after the bucket's end, so
everything admitted within ANY window-long span is counted at once, and a limit of 100 rpm admits at most 100
requests in any 60 seconds (never 200 across a minute boundary, as fixed windows would). The price is that a unit
may stay counted up to one bucket longer than the window; Retry-After includes that.

Redis keys, two per limit and level (level is `key` or `team`, id the InferenceKey or Group id):
    gateway:quota:<level>:<id>:<limit>          hash: bucket number -> amount counted in it, "total" -> their sum
    gateway:quota:<level>:<id>:<limit>:buckets  sorted set of the live bucket numbers (score = number), so
                                                expired buckets are found without reading the whole hash
Both expire one window plus one bucket after their last write, when everything in them has left the window,
so idle keys and teams leave nothing behind.

Admission (`admit`) counts one request for rpm and the prompt tokens for tpm and tpd; completion tokens are
added as they stream (`charge`). Redis's own clock is used, so gateway processes with skewed clocks agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

    from deployments.gateway.models import InferenceKey

PREFIX = "gateway:quota:"
LIMITS = ("rpm", "tpm", "tpd")
TOKEN_LIMITS = ("tpm", "tpd")
# name -> (window, bucket) in milliseconds
WINDOWS: dict[str, tuple[int, int]] = {
    "rpm": (60_000, 1_000),
    "tpm": (60_000, 1_000),
    "tpd": (86_400_000, 60_000),
}
LIMIT_NAMES = {"rpm": "requests per min (RPM)", "tpm": "tokens per min (TPM)", "tpd": "tokens per day (TPD)"}
LEVEL_NAMES = {"key": "this key", "team": "this key's team"}

# KEYS: per limit, its hash then its bucket set. ARGV: mode ("admit" or "charge"), now in ms ("" for Redis's
# clock), then per limit: limit, amount, window ms, bucket ms.
# admit: every limit is checked first (total + amount <= limit); if all pass, all are incremented, else none.
# charge: every limit is incremented (the tokens exist already), then checked (total <= limit).
# Reply: {0} when all is well, else {1, index of the limit (1-based), used, retry ms, too large (0/1)} for the
# refusing limit that frees last (a request larger than a limit can never pass: that one is reported first).
LUA = """
local mode = ARGV[1]
local now = tonumber(ARGV[2])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local count = (#ARGV - 2) / 4

local function arg(i, field) return tonumber(ARGV[2 + (i - 1) * 4 + field]) end

-- Drop the buckets whose counting time is over ((bucket + 1) * size + window <= now); return the live total.
local function live_total(i)
  local counts, order = KEYS[2 * i - 1], KEYS[2 * i]
  local window, size = arg(i, 3), arg(i, 4)
  local cutoff = math.floor((now - window) / size) - 1
  local total = tonumber(redis.call('HGET', counts, 'total') or '0')
  local old = redis.call('ZRANGEBYSCORE', order, '-inf', cutoff)
  if #old > 0 then
    local amounts = redis.call('HMGET', counts, unpack(old))
    for j = 1, #old do total = total - tonumber(amounts[j] or '0') end
    redis.call('HDEL', counts, unpack(old))
    redis.call('ZREMRANGEBYSCORE', order, '-inf', cutoff)
    redis.call('HSET', counts, 'total', total)
  end
  return total
end

-- Milliseconds until enough old buckets leave for `need` more to fit under the limit.
local function retry_ms(i, total, need)
  local counts, order = KEYS[2 * i - 1], KEYS[2 * i]
  local limit, window, size = arg(i, 1), arg(i, 3), arg(i, 4)
  local live = redis.call('ZRANGE', order, 0, -1)
  if #live > 0 then
    local amounts = redis.call('HMGET', counts, unpack(live))
    local left = total
    for j = 1, #live do
      left = left - tonumber(amounts[j] or '0')
      if left + need <= limit then return (tonumber(live[j]) + 1) * size + window - now end
    end
  end
  return window + size
end

local function add(i, amount)
  local counts, order = KEYS[2 * i - 1], KEYS[2 * i]
  local window, size = arg(i, 3), arg(i, 4)
  local bucket = string.format('%d', math.floor(now / size))
  redis.call('HINCRBY', counts, bucket, amount)
  redis.call('HINCRBY', counts, 'total', amount)
  redis.call('ZADD', order, bucket, bucket)
  redis.call('PEXPIRE', counts, window + size)
  redis.call('PEXPIRE', order, window + size)
end

local worst = nil
local function refuse(i, used, need)
  local limit = arg(i, 1)
  local too_large = 0
  local wait = 0
  if need > limit then too_large = 1 else wait = retry_ms(i, used, need) end
  if worst == nil or too_large > worst[5] or (too_large == worst[5] and wait > worst[4]) then
    worst = {1, i, used, wait, too_large}
  end
end

for i = 1, count do
  local limit, amount = arg(i, 1), arg(i, 2)
  local total = live_total(i)
  if mode == 'admit' then
    if total + amount > limit then refuse(i, total, amount) end
  else
    if amount > 0 then add(i, amount) end
    total = total + amount
    -- the next request needs at least one token
    if total > limit then refuse(i, total, 1) end
  end
end
if worst ~= nil then return worst end
if mode == 'admit' then
  for i = 1, count do
    local amount = arg(i, 2)
    if amount > 0 then add(i, amount) end
  end
end
return {0}
"""


@dataclass(frozen=True)
class Scope:
    """What a call counts against: its key's limits and, when the key counts against a team, the team's."""

    key_id: int
    key_limits: dict[str, int]
    team_id: int | None
    team_limits: dict[str, int]


@dataclass(frozen=True)
class Refusal:
    """Why a call may not go on: which limit (rpm, tpm, tpd) of which level (key, team), a message for the
    caller and the seconds after which a retry can pass."""

    limit: str
    level: str
    message: str
    retry_after: int


_script: AsyncScript | None = None


def _registered(client: redis.asyncio.Redis) -> AsyncScript:
    """The script, registered once per process (EVALSHA; redis-py loads it again if the server lost it)."""
    global _script
    if _script is None:
        _script = client.register_script(LUA)
    return _script


def _checks(scope: Scope, names: tuple[str, ...], amounts: dict[str, int]) -> list[tuple[str, str, int, int]]:
    """(level, limit name, limit, amount) for every set limit of key and team among `names`."""
    checks = []
    levels = [("key", scope.key_id, scope.key_limits)]
    if scope.team_id is not None:
        levels.append(("team", scope.team_id, scope.team_limits))
    for level, _, limits in levels:
        for name in names:
            if limits.get(name) is not None:
                checks.append((level, name, int(limits[name]), amounts[name]))
    return checks


def redis_keys(level: str, owner_id: int, name: str) -> tuple[str, str]:
    """The hash and bucket-set keys of one limit (see the module docstring)."""
    base = f"{PREFIX}{level}:{owner_id}:{name}"
    return base, base + ":buckets"


async def _run(
    client: redis.asyncio.Redis, mode: str, scope: Scope, checks: list, now: float | None
) -> tuple[tuple, list] | None:
    keys: list[str] = []
    args: list[str | int] = [mode, "" if now is None else int(now * 1000)]
    for level, name, limit, amount in checks:
        keys.extend(redis_keys(level, scope.key_id if level == "key" else scope.team_id, name))
        args.extend([limit, amount, *WINDOWS[name]])
    reply = await _registered(client)(keys=keys, args=args, client=client)
    if int(reply[0]) == 0:
        return None
    _, index, used, wait_ms, too_large = (int(value) for value in reply)
    return checks[index - 1], [used, wait_ms, bool(too_large)]


def _wait_text(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds // 3600}h{seconds // 60 % 60}m"


def _seconds(wait_ms: int) -> int:
    """Retry-After in whole seconds, rounded up (earlier would be refused again) and at least 1."""
    return max(1, math.ceil(wait_ms / 1000))


async def admit(
    redis: redis.asyncio.Redis, scope: Scope, prompt_tokens: int, *, now: float | None = None
) -> Refusal | None:
    """Count one request and its prompt tokens against every set limit of key and team, all or nothing.
    None when admitted; otherwise the refusal, and nothing was counted. `now` (epoch seconds) is for tests."""
    checks = _checks(scope, LIMITS, {"rpm": 1, "tpm": prompt_tokens, "tpd": prompt_tokens})
    if not checks:
        return None
    refused = await _run(redis, "admit", scope, checks, now)
    if refused is None:
        return None
    (level, name, limit, amount), (used, wait_ms, too_large) = refused
    where = f"{LEVEL_NAMES[level]} on {LIMIT_NAMES[name]}"
    if too_large:
        retry = WINDOWS[name][0] // 1000
        message = (
            f"Request too large for {where}: Limit {limit}, Requested {amount}. "
            "Send a shorter prompt, or ask for a higher limit."
        )
    else:
        retry = _seconds(wait_ms)
        message = (
            f"Rate limit reached for {where}: Limit {limit}, Used {used}, Requested {amount}. "
            f"Please try again in {_wait_text(retry)}."
        )
    return Refusal(limit=name, level=level, message=message, retry_after=retry)


async def charge(redis: redis.asyncio.Redis, scope: Scope, tokens: int, *, now: float | None = None) -> Refusal | None:
    """Add completion tokens as they stream (always counted: they were produced). A Refusal once a tokens limit
    of key or team is crossed; the caller ends the stream with its message. `now` (epoch seconds) is for tests."""
    if tokens <= 0:
        return None
    checks = _checks(scope, TOKEN_LIMITS, {"tpm": tokens, "tpd": tokens})
    if not checks:
        return None
    refused = await _run(redis, "charge", scope, checks, now)
    if refused is None:
        return None
    (level, name, limit, _), (used, wait_ms, _) = refused
    retry = _seconds(wait_ms)
    message = (
        f"Rate limit reached for {LEVEL_NAMES[level]} on {LIMIT_NAMES[name]} during the response: "
        f"Limit {limit}, Used {used}. The response was stopped here; please try again in {_wait_text(retry)}."
    )
    return Refusal(limit=name, level=level, message=message, retry_after=retry)


def scope_for(key: InferenceKey) -> Scope:
    """The limits a key's calls count against: its own, and its team's quota when it has a team (sync, ORM)."""
    from deployments.gateway.models import TeamQuota

    team_limits: dict[str, int] = {}
    if key.team_id is not None:
        quota = TeamQuota.objects.filter(team_id=key.team_id).first()
        team_limits = quota.limits if quota else {}
    return Scope(key_id=key.pk, key_limits=key.limits, team_id=key.team_id, team_limits=team_limits)
