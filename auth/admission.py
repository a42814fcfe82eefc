"""Letting a prediction in: its budget, its user's quotas and its key's concurrency, in one step.

A route that runs predictions is marked `@counted_at_admission`. The extension's before hook
authenticates its requests but leaves their budget for the moment the view has chosen the model
and counted the samples (`admit_prediction`), where one step checks and counts:

- the budget: the key's own rate and its user's (`limits.RequestBudget.windows`);
- the user's quotas for a request of that many samples (`quotas.py`);
- a slot among the key's `max_concurrent` predictions in flight.

A request that ends before it is admitted (a body the view refuses) is counted in its budget
then, by the after hook: every request costs budget. Two ways to do the step, one contract:

- `LocalAdmissions` (limits in memory, or a strategy other than the default): the budget through
  flask-limiter's strategy, quotas from the usage ledger, slots from lock files (`slots.py`).
  Nothing leaves the host: quotas and slots hold for its workers (the ledger: as of each
  worker's last write, `usage.flush_seconds`).
- `RedisAdmissions` (the default strategy, sliding window counter, on one Redis server): one
  Lua script (`counting.ADMIT`) checks and counts all three, all or nothing, in one round trip
  (shared with the worker's other requests of the moment: `batching.py`),
  so they hold exactly across workers and hosts. Quota counters live beside the limits, a hash
  of requests and samples per user and UTC day or month that starts from the ledger's counts
  when absent (Redis emptied, say) and expires after its window; slots are a sorted set per
  key whose members hold a lease, so the slot of a worker that died is free after
  `SLOT_LEASE_SECONDS` (a file slot is freed by the kernel at once). Quotas count answered
  predictions: a request that fails after admission gives its counts back.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from limits.errors import StorageError

from . import counting
from .errors import Code
from .ledger import Used
from .limits import PREFIX, RateLimited, RequestBudget, least_left, storage_down
from .quotas import QUOTAS, Quotas, Window, quota_fields, quotas_of

log = logging.getLogger(__name__)

SLOT_LEASE_SECONDS = 300  # longer than any prediction should run; a dead worker's slot waits


@dataclass(slots=True)
class Grant:
    """What admitting a prediction granted it: the headers of its budget and quotas, the slot it
    holds until it ends, and how to give its quota counts back if it fails."""

    limit_headers: dict[str, str] = field(default_factory=dict)
    quota_headers: list[tuple[str, str]] = field(default_factory=list)
    slot: Any = None  # `.release()` when the request ends
    give_back: Callable[[], None] | None = None


class Admissions(Protocol):
    def admit(
        self, principal: Any, address: str | None, samples: int, now: float, *, budget: bool
    ) -> Grant:
        """Let a prediction of `samples` samples by `principal` in, counting it in its budget
        too if `budget` (a route marked `@counted_at_admission`); 429 if it may not."""
        ...

    def used(self, user: dict[str, Any], now: float) -> Used:
        """What `user` has used of their quotas at `now`, as the admissions count it."""
        ...

    def charge(self, user_id: str, requests: int, samples: int, now: float) -> None:
        """Count predictions answered outside a request (a job's, admitted when it was
        submitted) where quotas are counted apart from the usage ledger; call it before the
        ledger counts them."""
        ...


def admissions_for(budget: RequestBudget, state: Any) -> Admissions:
    storage = counting.admits_in_one_trip(budget.limiter.limiter)
    if storage is None:
        return LocalAdmissions(budget, state)
    return RedisAdmissions(budget, state, storage)


def concurrency_refused(most: int) -> RateLimited:
    return RateLimited(
        f"this key already has {most} prediction(s) in flight, its limit; retry when one ends",
        headers={"Retry-After": "1"},
        details={"limit": "max_concurrent", "max_concurrent": most},
        error_code=Code.CONCURRENCY_LIMIT_EXCEEDED,
    )


class LocalAdmissions:
    def __init__(self, budget: RequestBudget, state: Any) -> None:
        self._budget = budget
        self._state = state

    def admit(
        self, principal: Any, address: str | None, samples: int, now: float, *, budget: bool
    ) -> Grant:
        state, user = self._state, principal.user
        grant = Grant(self._budget.count(principal, address) if budget else {})
        quotas = quotas_of(state, user, now)
        if quotas is not None:
            used = state.ledger.used(user["id"], now)
            grant.quota_headers = quota_fields(quotas, used, samples, now)
        most = _most_in_flight(principal)
        if most:
            grant.slot = state.slots.take(f"key-{principal.key['id']}", most)
            if grant.slot is None:
                raise concurrency_refused(most)
        return grant

    def used(self, user: dict[str, Any], now: float) -> Used:
        return self._state.ledger.used(user["id"], now)

    def charge(self, user_id: str, requests: int, samples: int, now: float) -> None:
        pass  # the ledger is what these quotas read


class RedisAdmissions:
    def __init__(self, budget: RequestBudget, state: Any, storage: Any) -> None:
        self._budget = budget
        self._state = state
        self._storage = storage

    def admit(
        self, principal: Any, address: str | None, samples: int, now: float, *, budget: bool
    ) -> Grant:
        state, user = self._state, principal.user
        windows = self._budget.windows(principal, address) if budget else []
        quotas = quotas_of(state, user, now)
        quota = self._quota_ask(user["id"], quotas, samples, now) if quotas is not None else None
        most = _most_in_flight(principal)
        slot = None
        if most:
            key = self._storage.prefixed_key(f"{PREFIX}/slots/{principal.key['id']}")
            slot = counting.SlotAsk(key, most, secrets.token_hex(8), SLOT_LEASE_SECONDS * 1000)
        try:
            verdict = counting.admit_on_redis(
                self._storage,
                [(window.item, window.identifiers) for window in windows],
                quota=quota,
                slot=slot,
            )
        except StorageError:
            if not self._budget.fail_open:
                raise
            storage_down()
            return Grant()
        if verdict.verdict == counting.WINDOW_FULL:
            raise windows[verdict.which - 1].refused(verdict.windows[verdict.which - 1])
        quota_headers = (
            quota_fields(quotas, verdict.counts, samples, now) if quotas is not None else []
        )
        if verdict.verdict == counting.NO_SLOT:
            raise concurrency_refused(most)
        grant = Grant(least_left(windows, verdict.windows) if windows else {}, quota_headers)
        if slot is not None:
            grant.slot = _RedisSlot(self._storage, slot)
        if quota is not None:
            grant.give_back = lambda: self._give_back(quota)
        return grant

    def used(self, user: dict[str, Any], now: float) -> Used:
        ledger = self._state.ledger.used(user["id"], now)
        keys = _quota_keys(self._storage, user["id"], Window.at(now))
        try:
            with self._storage.get_connection().pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, "requests", "samples")
                day, month = pipe.execute()  # one round trip
        except self._storage.base_exceptions:
            return ledger  # the counters cannot be read: the ledger's are the next best
        day_requests, day_samples = _counts(day, ledger.requests_per_day, ledger.samples_per_day)
        month_requests, month_samples = _counts(
            month, ledger.requests_per_month, ledger.samples_per_month
        )
        return Used(day_requests, day_samples, month_requests, month_samples)

    def charge(self, user_id: str, requests: int, samples: int, now: float) -> None:
        quota = self._quota_ask(user_id, None, samples, now, requests=requests)
        try:
            counting.admit_on_redis(self._storage, [], quota=quota)  # no limits: it counts
        except StorageError as exc:
            log.warning("could not count a job's predictions in the quota counters: %s", exc)

    def _quota_ask(
        self,
        user_id: str,
        quotas: Quotas | None,
        samples: int,
        now: float,
        *,
        requests: int = 1,
    ) -> counting.QuotaAsk:
        window = Window.at(now)
        seeds = self._state.ledger.used(user_id, now)
        return counting.QuotaAsk(
            keys=_quota_keys(self._storage, user_id, window),
            ends_ms=(window.day_ends * 1000, window.month_ends * 1000),
            samples=samples,
            limits=_limits(quotas),
            seeds=tuple(seeds),  # in the order of QUOTAS, as `Used` is
            requests=requests,
        )

    def _give_back(self, quota: counting.QuotaAsk) -> None:
        try:
            with self._storage.get_connection().pipeline(transaction=False) as pipe:
                for key in quota.keys:
                    pipe.hincrby(key, "requests", -1)
                    pipe.hincrby(key, "samples", -quota.samples)
                pipe.execute()
        except self._storage.base_exceptions as exc:
            log.warning("could not give back the quota counts of a failed prediction: %s", exc)


class _RedisSlot:
    def __init__(self, storage: Any, slot: counting.SlotAsk) -> None:
        self._storage = storage
        self._slot = slot

    def release(self) -> None:
        try:
            counting.free_on_redis(self._storage, self._slot)
        except StorageError as exc:  # its lease ends it
            log.warning("could not free a prediction slot (its lease will): %s", exc)


def _most_in_flight(principal: Any) -> int | None:
    key = principal.key
    return key.get("max_concurrent") if key is not None else None


def _limits(quotas: Quotas | None) -> tuple[int, int, int, int]:
    """Each quota's limit in the order of QUOTAS, -1 where none holds."""
    limits = [-1] * len(QUOTAS)
    for q in quotas.items if quotas is not None else ():
        limits[q.index] = q.limit
    return tuple(limits)  # type: ignore[return-value]


def _quota_keys(storage: Any, user_id: str, window: Window) -> tuple[str, str]:
    return (
        storage.prefixed_key(f"{PREFIX}/quota/{user_id}/{window.day}"),
        storage.prefixed_key(f"{PREFIX}/quota/{user_id}/{window.month}"),
    )


def _counts(found: list[Any], requests: int, samples: int) -> tuple[int, int]:
    """A counter's requests and samples, or the ledger's where it has none."""
    if found[0] is None:
        return requests, samples
    return int(found[0]), int(found[1] or 0)
