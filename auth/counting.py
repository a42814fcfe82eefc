"""Counting a hit and reading its window in one round trip to the rate limit storage.

The budget's answer needs both: whether the request may go on, and the window (remaining, reset)
for its X-RateLimit-* headers. The `limits` strategies give them in two calls, which against
Redis are two round trips per request. For the default strategy (sliding window counter) on
Redis, one Lua script here takes the same keys and does what limits' own acquire script does
(shifting an expired window, then counting the hit only if it fits) and returns the window after
it; the headers are then computed as `SlidingWindowCounterRateLimiter.get_window_stats`
computes them. Every other strategy and storage (memory, where a call costs no round trip) is
asked twice, through the strategy.
"""

from __future__ import annotations

import time
from math import floor, inf
from typing import Any

from limits import RateLimitItem, WindowStats
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import RateLimiter, SlidingWindowCounterRateLimiter

# KEYS: the previous and the current window (limits' layout); ARGV: limit, expiry (s), cost.
# Answers {counted (0/1), previous count, previous ttl ms, current count, current ttl ms}.
SLIDING_HIT = """
local limit, expiry, cost = tonumber(ARGV[1]), tonumber(ARGV[2]) * 1000, tonumber(ARGV[3])
local ttl = tonumber(redis.call('pttl', KEYS[2]))
if ttl > 0 and ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', ttl + expiry)
end
local function window()
    return tonumber(redis.call('get', KEYS[1])) or 0,
        math.max(tonumber(redis.call('pttl', KEYS[1])), 0),
        tonumber(redis.call('get', KEYS[2])) or 0,
        math.max(tonumber(redis.call('pttl', KEYS[2])), 0)
end
local pc, pt, cc, ct = window()
if math.floor(pc * pt / expiry) + cc + cost > limit then
    return {0, pc, pt, cc, ct}
end
if redis.call('exists', KEYS[2]) == 1 then
    redis.call('incrby', KEYS[2], cost)
else
    redis.call('set', KEYS[2], cost, 'PX', expiry * 2)
end
pc, pt, cc, ct = window()
return {1, pc, pt, cc, ct}
"""


def hit_and_window(
    strategy: RateLimiter, item: RateLimitItem, *identifiers: str
) -> tuple[bool, WindowStats]:
    """Count one hit of `item` for `identifiers` if it fits: whether it did, and the window
    after it (StorageError when the storage cannot be reached)."""
    storage = strategy.storage
    if isinstance(strategy, SlidingWindowCounterRateLimiter) and isinstance(storage, RedisStorage):
        return _sliding_on_redis(storage, item, item.key_for(*identifiers))
    counted = strategy.hit(item, *identifiers)
    return counted, strategy.get_window_stats(item, *identifiers)


def _sliding_on_redis(
    storage: RedisStorage, item: RateLimitItem, key: str
) -> tuple[bool, WindowStats]:
    script = getattr(storage, "_budget_hit", None)
    if script is None:
        script = storage._budget_hit = storage.get_connection().register_script(SLIDING_HIT)
    current = storage.prefixed_key(f"{{{key}}}")
    expiry = item.get_expiry()
    try:
        counted, pc, pt, cc, ct = script([f"{current}/-1", current], [item.amount, expiry, 1])
    except storage.base_exceptions as exc:
        raise StorageError(exc) from exc
    return bool(counted), _sliding_stats(item, int(pc), pt / 1000, int(cc), ct / 1000)


def _sliding_stats(
    item: RateLimitItem, previous: int, previous_ttl: float, current: int, current_ttl: float
) -> WindowStats:
    """The window as `SlidingWindowCounterRateLimiter.get_window_stats` reports it."""
    expiry = item.get_expiry()
    remaining = max(0, item.amount - floor(previous * previous_ttl / expiry + current))
    now = time.time()
    if not (previous or current):
        return WindowStats(now, remaining)
    previous_reset: Any = previous_ttl % (expiry / previous) if previous else inf
    current_reset: Any = current_ttl % expiry if current else inf
    return WindowStats(now + min(previous_reset, current_reset), remaining)
