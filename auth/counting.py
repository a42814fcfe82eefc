"""Counting in one round trip to the rate limit storage.

The budget's answer needs both whether the request may go on and the window (remaining, reset)
for its X-RateLimit-* headers. The `limits` strategies give them in two calls, which against
Redis are two round trips per request. For the default strategy (sliding window counter) on
Redis, one Lua script here (`ADMIT`) takes the same keys and does what limits' own acquire
script does (shifting an expired window, then counting the hit only if it fits:
`WINDOW_FUNCTIONS`) and returns the window after it; the headers are then computed as
`SlidingWindowCounterRateLimiter.get_window_stats` computes them. On `memory://` the same two
steps read the storage's counters once (`_hit_in_memory`: no round trip, but the strategy's
two calls go through sixteen of the storage's wrapped methods). Every other strategy and
storage is asked twice, through the strategy.

The same script counts a route's one budget window (`hit_and_window`) and a prediction
(`admission.py`): every window of its budgets, its user's quota counters and its key's slot,
all or nothing, in the same one call. The asks of a process's requests that come while one
trip is out go together in the next (`batching.Batcher`): still one trip a request at most,
fewer under load, each ask still counted on its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from math import floor, inf
from typing import Any

from limits import RateLimitItem, WindowStats
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisClusterStorage, RedisStorage
from limits.strategies import RateLimiter, SlidingWindowCounterRateLimiter

from .batching import Batcher, TripFailed
from .offload import let_others_run

# limits' sliding window counter, as its own acquire script counts it: a window is a pair of
# keys (the previous and the current window, limits' layout), its limit and its expiry in ms;
# what is read of it is kept for the answer (`read`), which reads again only windows not reached.
WINDOW_FUNCTIONS = """
local function shift(w)
    local ttl = tonumber(redis.call('pttl', w.current))
    if ttl > 0 and ttl < w.expiry then
        redis.call('rename', w.current, w.previous)
        redis.call('set', w.current, 0, 'PX', ttl + w.expiry)
    end
end
local function read(w)  -- the window's counts and ttls, kept in w for its answer
    local current = redis.call('get', w.current)
    w.pc = tonumber(redis.call('get', w.previous)) or 0
    w.pt = math.max(tonumber(redis.call('pttl', w.previous)), 0)
    w.cc, w.counted = tonumber(current) or 0, current ~= false
    w.ct = math.max(tonumber(redis.call('pttl', w.current)), 0)
end
local function fits(w, cost)
    read(w)
    return math.floor(w.pc * w.pt / w.expiry) + w.cc + cost <= w.limit
end
local function count(w, cost)
    if w.counted then
        w.cc = redis.call('incrby', w.current, cost)
    else
        redis.call('set', w.current, cost, 'PX', w.expiry * 2)
        w.cc, w.ct, w.counted = cost, w.expiry * 2, true
    end
end
"""

# Requests let in, each all or nothing: every budget window and, for a prediction, the user's
# quotas and a key's slot; and slots let go. One call carries the asks of several requests
# (`admit_on_redis`, `free_on_redis`), each carried out on its own, in turn: ARGV[1] says how
# many; then each ask gives its verb (`admit` or `free`), its number of keys and of arguments,
# and its arguments; its keys follow the previous ask's in KEYS. Answers a list, an answer an
# ask; an ask that fails in Redis answers {-1, the error} and leaves the others standing.
# An admit's keys: two per window; then, with quotas, the user's day and month counters (hashes
# of requests and samples); then, with a slot limit, the key's slots (a sorted set of leases).
# Its arguments: windows, quotas (0/1), slots (most in flight; 0: none); per window its limit and
# expiry (s); with quotas: the day's and the month's ends (epoch ms), the samples and the
# requests (one for a request; a job's chunk counts each of its inputs as one), the four limits
# (requests and samples a day, a month; -1: none) and four counts to start absent counters from
# (the usage ledger's); with slots: this request's member and its lease (ms).
# Its answer: {verdict, which, the four counts before this request, then each window's previous
# count, ttl ms, current count, ttl ms}: verdict 0 counted, 1 window `which` is full, 2 quota
# `which` is spent, 3 no slot is free (nothing counted unless 0).
# A free's key: the key's slots; its argument: the member to remove. Its answer: {0}.
ADMIT = (
    WINDOW_FUNCTIONS
    + """
local function admit(keys, argv)
    local nwindows, quotas, slots = tonumber(argv[1]), tonumber(argv[2]) == 1, tonumber(argv[3])
    local arg, key = 4, 1
    local windows = {}
    for i = 1, nwindows do
        windows[i] = {previous = keys[key], current = keys[key + 1], limit = tonumber(argv[arg]),
            expiry = tonumber(argv[arg + 1]) * 1000}
        key, arg = key + 2, arg + 2
    end
    local used, costs, day, month = {0, 0, 0, 0}, {1, 1, 1, 1}, nil, nil
    local function answer(verdict, which)
        local out = {verdict, which, used[1], used[2], used[3], used[4]}
        for i = 1, nwindows do
            local w = windows[i]
            if w.pc == nil then  -- not reached: a window before it is full
                read(w)
            end
            table.insert(out, w.pc)
            table.insert(out, w.pt)
            table.insert(out, w.cc)
            table.insert(out, w.ct)
        end
        return out
    end
    for i = 1, nwindows do
        shift(windows[i])
        if not fits(windows[i], 1) then
            return answer(1, i)
        end
    end
    if quotas then
        day, month = keys[key], keys[key + 1]
        key = key + 2
        local ends = {tonumber(argv[arg]), tonumber(argv[arg + 1])}
        local requests, samples = tonumber(argv[arg + 3]), tonumber(argv[arg + 2])
        costs = {requests, samples, requests, samples}
        for i, counter in ipairs({day, month}) do
            if redis.call('exists', counter) == 0 then
                redis.call('hset', counter, 'requests', argv[arg + 6 + 2 * i],
                    'samples', argv[arg + 7 + 2 * i])
                redis.call('pexpireat', counter, ends[i])
            end
            local counts = redis.call('hmget', counter, 'requests', 'samples')
            used[2 * i - 1], used[2 * i] = tonumber(counts[1]), tonumber(counts[2])
        end
        for i = 1, 4 do
            local limit = tonumber(argv[arg + 3 + i])
            if limit >= 0 and used[i] + costs[i] > limit then
                return answer(2, i)
            end
        end
        arg = arg + 12
    end
    local member, lease, now
    if slots > 0 then
        member, lease = argv[arg], tonumber(argv[arg + 1])
        local time = redis.call('time')
        now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        redis.call('zremrangebyscore', keys[key], '-inf', now)
        if redis.call('zcard', keys[key]) >= slots then
            return answer(3, 0)
        end
    end
    for i = 1, nwindows do
        count(windows[i], 1)
    end
    if quotas then
        for _, counter in ipairs({day, month}) do
            redis.call('hincrby', counter, 'requests', costs[1])
            redis.call('hincrby', counter, 'samples', costs[2])
        end
    end
    if slots > 0 then
        redis.call('zadd', keys[key], now + lease, member)
        redis.call('pexpire', keys[key], lease)
    end
    return answer(0, 0)
end
local function free(keys, argv)
    redis.call('zrem', keys[1], argv[1])
    return {0}
end
local verbs = {admit = admit, free = free}
local answers, k, a = {}, 0, 1
for n = 1, tonumber(ARGV[1]) do
    local verb, nkeys, nargs = verbs[ARGV[a + 1]], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local ok, answer = pcall(verb, {unpack(KEYS, k + 1, k + nkeys)},
        {unpack(ARGV, a + 4, a + 3 + nargs)})
    if not ok then
        answer = {-1, type(answer) == 'table' and answer.err or tostring(answer)}
    end
    answers[n] = answer
    k, a = k + nkeys, a + 3 + nargs
end
return answers
"""
)


def hit_and_window(
    strategy: RateLimiter, item: RateLimitItem, *identifiers: str, key: str | None = None
) -> tuple[bool, WindowStats]:
    """Count one hit of `item` for `identifiers` if it fits: whether it did, and the window
    after it (StorageError when the storage cannot be reached). `key`: the storage key of
    `identifiers` (`item.key_for`), where the caller has it already."""
    storage = strategy.storage
    if isinstance(strategy, SlidingWindowCounterRateLimiter):
        if isinstance(storage, RedisStorage):
            verdict = admit_on_redis(storage, [(item, identifiers)])  # one window: one slot
            return verdict.verdict == ADMITTED, verdict.windows[0]
        if isinstance(storage, MemoryStorage):
            return _hit_in_memory(storage, item, key or item.key_for(*identifiers))
    counted = strategy.hit(item, *identifiers)
    return counted, strategy.get_window_stats(item, *identifiers)


def _hit_in_memory(
    storage: MemoryStorage, item: RateLimitItem, key: str
) -> tuple[bool, WindowStats]:
    """`MemoryStorage.acquire_sliding_window_entry` and then the window as
    `get_window_stats` reads it, in one pass over the storage's own counters (`storage` and
    `expirations`, read as its `get` reads them: an expired counter is 0), under the lock its
    `incr` takes for the current window's key, so that the check and the count are one step
    beside its other callers. Through the storage's methods the two calls went through sixteen
    of them, each wrapped, three times what the counting itself costs."""
    expiry, limit, now = item.get_expiry(), item.amount, time.time()
    previous_key, current_key = storage.sliding_window_keys(key, expiry, now)
    counters, expirations = storage.storage, storage.expirations
    storage._MemoryStorage__schedule_expiry()  # type: ignore[attr-defined]  # as `incr` does
    with storage.locks[current_key]:
        previous = counters.get(previous_key, 0) if expirations.get(previous_key, 0) > now else 0
        current = counters.get(current_key, 0) if expirations.get(current_key, 0) > now else 0
        previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry if previous else 0.0
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        counted = floor(previous * previous_ttl / expiry + current) + 1 <= limit
        if counted:
            if not current:  # a new window's counter, as `incr` starts one
                expirations[current_key] = now + 2 * expiry
            current += 1
            counters[current_key] = current
        elif current_key not in expirations:  # refused, no counter: no lock left behind
            storage.locks.pop(current_key, None)
    return counted, _sliding_stats(item, previous, previous_ttl, current, current_ttl)


def admits_in_one_trip(strategy: RateLimiter) -> RedisStorage | None:
    """The Redis storage of `strategy` if `admit_on_redis` can count with it (the sliding window
    counter on one Redis server: a cluster refuses a script whose keys fall in several of its
    slots), else None."""
    storage = strategy.storage
    if isinstance(strategy, SlidingWindowCounterRateLimiter) and isinstance(storage, RedisStorage):
        if not isinstance(storage, RedisClusterStorage):
            return storage
    return None


def _window_keys(storage: RedisStorage, item: RateLimitItem, key: str) -> list[str]:
    current = storage.prefixed_key(f"{{{key}}}")
    return [f"{current}/-1", current]


@dataclass(frozen=True, slots=True)
class QuotaAsk:
    """A user's quota counters for `ADMIT`: the keys of the day's and the month's, when each
    ends (epoch ms), the request's samples, the four limits (-1: none) and the counts to start
    an absent counter from; `requests` is more than one for the inputs of a job's chunk."""

    keys: tuple[str, str]
    ends_ms: tuple[int, int]
    samples: int
    limits: tuple[int, int, int, int]
    seeds: tuple[int, int, int, int]
    requests: int = 1


@dataclass(frozen=True, slots=True)
class SlotAsk:
    """A key's slots for `ADMIT`: the sorted set, how many may be held, this request's member
    and how long it holds the slot if it never lets go (a worker that died)."""

    key: str
    most: int
    member: str
    lease_ms: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `ADMIT` answered (see there): `counts` before this request (requests and samples a
    day, a month), each window as the strategy reports it."""

    verdict: int
    which: int
    counts: tuple[int, int, int, int]
    windows: list[WindowStats]


ADMITTED, WINDOW_FULL, QUOTA_SPENT, NO_SLOT = range(4)


def admit_on_redis(
    storage: RedisStorage,
    windows: list[tuple[RateLimitItem, tuple[str, ...]]],
    *,
    quota: QuotaAsk | None = None,
    slot: SlotAsk | None = None,
) -> Verdict:
    """`ADMIT` asked: every window of `windows` (an item and its identifiers), the quota
    counters and the slot, checked and counted all or nothing, in a trip to Redis shared with
    the asks of this process's other requests of the moment (`batching.py`; StorageError when
    Redis cannot be reached)."""
    keys: list[str] = []
    args: list[Any] = [len(windows), int(quota is not None), slot.most if slot else 0]
    for item, identifiers in windows:
        keys += _window_keys(storage, item, item.key_for(*identifiers))
        args += [item.amount, item.get_expiry()]
    if quota is not None:
        keys += quota.keys
        args += [*quota.ends_ms, quota.samples, quota.requests, *quota.limits, *quota.seeds]
    if slot is not None:
        keys.append(slot.key)
        args += [slot.member, slot.lease_ms]
    values = [int(value) for value in _ask(storage, "admit", keys, args)]
    stats = [
        _sliding_stats(item, values[i], values[i + 1] / 1000, values[i + 2], values[i + 3] / 1000)
        for (item, _), i in zip(windows, range(6, len(values), 4), strict=True)
    ]
    return Verdict(values[0], values[1], tuple(values[2:6]), stats)  # type: ignore[arg-type]


def free_on_redis(storage: RedisStorage, slot: SlotAsk) -> None:
    """Let go of a slot `admit_on_redis` took, in a trip shared as its asks are (StorageError
    when Redis cannot be reached)."""
    _ask(storage, "free", [slot.key], [slot.member])


class AskFailed(Exception):
    """Redis could not carry out one ask of `ADMIT` (its message says why)."""


Ask = tuple[str, list[str], list[Any]]  # an ask of `ADMIT`: its verb, keys and arguments
GATHER_SECONDS = 0.002  # the most a gevent worker's trip waits for its other requests' asks


def _ask(storage: RedisStorage, verb: str, keys: list[str], args: list[Any]) -> list[Any]:
    """The answer to one ask of `ADMIT`, carried in this process's next trip."""
    try:
        answer = _admits(storage).ask((verb, keys, args))
    except TripFailed as exc:
        raise StorageError(exc.__cause__ or exc) from exc
    if int(answer[0]) == -1:
        message = answer[1].decode() if isinstance(answer[1], bytes) else str(answer[1])
        raise StorageError(AskFailed(message))
    return answer


def _admits(storage: RedisStorage) -> Batcher[Ask, list[Any]]:
    """This process's batcher of `ADMIT` asks to `storage` (made anew in a forked child)."""
    found = getattr(storage, "_admits", None)
    if found is None or found[0] != os.getpid():
        gather = partial(let_others_run, GATHER_SECONDS)  # under gevent only: see there
        found = (os.getpid(), Batcher(_Line(storage).send, gather=gather))
        storage._admits = found  # type: ignore[attr-defined]
    return found[1]


class _Line:
    """The one connection a process's trips of `ADMIT` go over. Its batcher sends one trip at a
    time, so one connection serves them all: taken from the storage's pool at the first trip
    (not when the app is made, so that a worker started while Redis is down starts) and kept,
    as redis-py's `single_connection_client` keeps it. Through the pool, every call had the
    connection checked for input left over (a poll of its socket: 2.4% of a worker's time,
    py-spy). Here that check, which finds a connection the server closed (a restart, an idle
    `timeout`, CLIENT KILL) and opens it again, runs only before a trip that follows
    `IDLE_SECONDS` without one: under load, never. A trip that fails leaves the connection to
    redis-py, which closes it and opens it again for the next."""

    IDLE_SECONDS = 0.1

    def __init__(self, storage: RedisStorage, *, clock: Callable[[], float] = time.monotonic):
        self._storage = storage
        self._clock = clock
        self._client: Any = None
        self._script: Any = None
        self._last_trip = -inf

    def send(self, asks: list[Ask]) -> list[list[Any]]:
        """One call of `ADMIT` carrying `asks`: their answers."""
        keys: list[str] = []
        args: list[Any] = [len(asks)]
        for verb, ask_keys, ask_args in asks:
            keys += ask_keys
            args += [verb, len(ask_keys), len(ask_args), *ask_args]
        storage, now = self._storage, self._clock()
        try:
            if self._client is None:
                from redis import Redis  # here: installed with the `redis` extra only

                pool = storage.get_connection().connection_pool
                self._client = Redis(connection_pool=pool, single_connection_client=True)
                self._script = self._client.register_script(ADMIT)
            elif now - self._last_trip > self.IDLE_SECONDS:
                self._check(self._client.connection)
            self._last_trip = now
            return self._script(keys, args)
        except storage.base_exceptions as exc:
            raise StorageError(exc) from exc

    def close(self) -> None:
        """Let go of the connection (a process that goes on without this line)."""
        if self._client is not None:
            self._client.close()
            self._client = self._script = None

    def _check(self, connection: Any) -> None:
        """As the pool checks a connection it hands out: input waiting on an idle connection
        is the server's close (or a stale answer): open it again."""
        try:
            stale = connection.can_read()
        except (OSError, self._storage.base_exceptions):
            stale = True
        if stale:
            connection.disconnect()  # the trip's send connects again


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
