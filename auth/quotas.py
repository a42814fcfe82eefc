"""Quotas by tier: how many predictions and samples a user may have in a UTC day and month.

`quotas.tiers` in the YAML names tiers (`free: {requests_per_day: 1000, samples_per_month:
100000}`), `quotas.default_tier` the one users get unless an admin sets their `tier`, and an admin
may override single quotas for one user (`quota: {requests_per_day: 50}`). A quota left out is
unlimited.

Windows are calendar windows, computed when a request is checked: the day ends at midnight UTC
and the month at the first of the next month, so a quota resets exactly then, with no reset job
that could run late. What was used is read from the one usage ledger (`ledger.py`), the same
figures the usage API, the profile and the headers show.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from .errors import ApiError, Code
from .storage.shapes import iso

QUOTAS = ("requests_per_day", "samples_per_day", "requests_per_month", "samples_per_month")


class QuotaExceeded(ApiError):
    """429: a quota of the calendar day or month is spent."""

    code, error_code = 429, Code.QUOTA_EXCEEDED


def quota_values(value: Any, where: str = "a tier") -> dict[str, int]:
    """`value` as quotas (ValueError naming what is wrong): names from QUOTAS, whole numbers."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must map quota names ({', '.join(QUOTAS)}) to numbers")
    for name, amount in value.items():
        if name not in QUOTAS:
            raise ValueError(f"{where}: unknown quota {name!r}; one of {', '.join(QUOTAS)}")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ValueError(f"{where}: {name} must be a whole number >= 0, not {amount!r}")
    return dict(value)


def check_tiers(tiers: Any) -> None:
    for name, quotas in tiers.items():
        quota_values(quotas, f"tier {name!r}")


def quota_problem(value: Any) -> str | None:
    """The check of a stored per-user `quota` override (`storage.shapes`)."""
    try:
        quota_values(value, "the override")
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class Window:
    """The calendar day and month a moment falls in."""

    day: str  # 2026-12-02
    month: str  # 2026-12
    hour: int
    day_ends: int  # epoch seconds of the next midnight UTC
    month_starts: int
    month_ends: int

    @classmethod
    def at(cls, now: float) -> Window:
        """The window of moment `now`, worked out once per UTC hour (every prediction asks)."""
        return _window_of_hour(int(now) // 3600)

    def ends(self, quota: str) -> int:
        return self.day_ends if quota.endswith("_day") else self.month_ends

    def width(self, quota: str) -> int:
        """The length of `quota`'s window in seconds."""
        return 86400 if quota.endswith("_day") else self.month_ends - self.month_starts


@lru_cache(maxsize=64)
def _window_of_hour(hour: int) -> Window:
    moment = datetime.fromtimestamp(hour * 3600, timezone.utc)
    midnight = datetime(moment.year, moment.month, moment.day, tzinfo=timezone.utc)
    days = calendar.monthrange(moment.year, moment.month)[1]
    first = datetime(moment.year, moment.month, 1, tzinfo=timezone.utc)
    return Window(
        day=moment.strftime("%Y-%m-%d"),
        month=moment.strftime("%Y-%m"),
        hour=moment.hour,
        day_ends=int(midnight.timestamp()) + 86400,
        month_starts=int(first.timestamp()),
        month_ends=int(first.timestamp()) + days * 86400,
    )


def limits_of(
    user: dict[str, Any], tiers: dict[str, dict[str, int]], default_tier: str | None
) -> dict[str, int]:
    """The quotas that hold for `user`: their tier's (their own `tier`, else the default),
    with their own overrides on top."""
    tier = user.get("tier") or default_tier
    return {**tiers.get(tier or "", {}), **(user.get("quota") or {})}


@dataclass(frozen=True, slots=True)
class Quota:
    """One quota of a user as it stands in one UTC hour: its limit, when its window ends, and
    its item of the IETF `RateLimit-Policy` field (which names the window's length)."""

    name: str
    limit: int
    resets: int  # epoch seconds
    policy: str
    per_sample: bool  # spent by each sample, not each request
    index: int  # its place in QUOTAS, and in `ledger.Used`


@dataclass(frozen=True, slots=True)
class Quotas:
    """Each quota that holds for a user in one UTC hour, in the order of QUOTAS, and the
    `RateLimit-Policy` field that names them all."""

    items: tuple[Quota, ...]
    policy: str


def quotas_of(state: Any, user: dict[str, Any], now: float) -> Quotas | None:
    """The quotas that hold for `user` at `now` (None: none do)."""
    limits = limits_of(user, state.quotas.tiers, state.quotas.default_tier)
    return _quotas(tuple(limits.items()), int(now) // 3600) if limits else None


@lru_cache(maxsize=1024)
def _quotas(limits: tuple[tuple[str, int], ...], hour: int) -> Quotas:
    # Worked out once per set of limits and hour: every prediction of a user asks.
    given, window = dict(limits), _window_of_hour(hour)
    items = tuple(
        Quota(
            name,
            given[name],
            window.ends(name),
            f'"{name}";q={given[name]};w={window.width(name)}',
            name.startswith("samples"),
            index,
        )
        for index, name in enumerate(QUOTAS)
        if name in given
    )
    return Quotas(items, ", ".join(q.policy for q in items))


def usage_today(state: Any, user: dict[str, Any], now: float) -> dict[str, Any]:
    """What the profile and the login answer show: today's usage and each quota's state."""
    used = state.quota_used(user, now)
    return {
        "today": {"requests": used.requests_per_day, "samples": used.samples_per_day},
        "quotas": quota_state(state, user, now, used),
    }


def quota_state(
    state: Any, user: dict[str, Any], now: float, used: Any = None
) -> list[dict[str, Any]]:
    """What the usage API and the profile show of `user`'s quotas at `now` (`used`, default as
    `state.quota_used` reads it: read only for a user who has quotas)."""
    quotas = quotas_of(state, user, now)
    if quotas is None:
        return []
    used = used or state.quota_used(user, now)
    return [
        {
            "quota": q.name,
            "limit": q.limit,
            "used": used[q.index],
            "remaining": max(0, q.limit - used[q.index]),
            "resets_at": iso(q.resets),
        }
        for q in quotas.items
    ]


def quota_check(
    state: Any, user: dict[str, Any], samples: int, now: float, used: Any = None
) -> list[tuple[str, str]]:
    """The IETF `RateLimit-Policy` and `RateLimit` fields of a prediction of `samples` samples
    by `user` at `now` (`quota_fields`); `used`: the counts before this request (default: as
    `state.quota_used` reads them, read only for a user who has quotas)."""
    quotas = quotas_of(state, user, now)
    if quotas is None:
        return []
    return quota_fields(quotas, used or state.quota_used(user, now), samples, now)


def quota_fields(
    quotas: Quotas, used: tuple[int, ...], samples: int, now: float
) -> list[tuple[str, str]]:
    """The `RateLimit-Policy` and `RateLimit` fields of a prediction of `samples` samples at
    `now` under `quotas`, as they stand once it is counted (nothing is counted here), `used`
    being the counts before it (`ledger.Used`); 429 QUOTA_EXCEEDED if a quota cannot take it
    (with `Retry-After` at the reset, and the fields of that quota)."""
    moment, states = int(now), []
    for q in quotas.items:
        spent, cost = used[q.index], samples if q.per_sample else 1
        until = max(1, q.resets - moment)
        if spent + cost > q.limit:
            raise _spent(q, spent, cost, until)
        states.append(f'"{q.name}";r={q.limit - spent - cost};t={until}')
    return [("RateLimit-Policy", quotas.policy), ("RateLimit", ", ".join(states))]


def _spent(q: Quota, spent: int, cost: int, until: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"the {q.name} quota of {q.limit} is spent ({spent} used, this request needs "
        f"{cost}); it resets at {iso(q.resets)}",
        headers={
            "Retry-After": str(until),
            "RateLimit-Policy": q.policy,
            "RateLimit": f'"{q.name}";r={max(0, q.limit - spent)};t={until}',
        },
        details={
            "quota": q.name,
            "limit": q.limit,
            "used": spent,
            "resets_at": iso(q.resets),
        },
    )
