"""The usage ledger: every prediction counted once, by user, credential, model, status class and
UTC hour, with its samples and inference milliseconds.

One ledger feeds everything that speaks of usage: quota enforcement (`quotas.py`), the quota
headers, the usage API and report, and the profile, so they never disagree. Every status class
is counted; quotas are spent by the predictions that were answered (2xx): a day record's
`requests` and `samples` are those.

A request costs no disk write: it adds to this process's pending counts (a dict, under a lock
held for microseconds). A background job writes what is pending every `usage.flush_seconds`
through the store, in one change that adds to the records it touches (one record per user and
UTC day), and once more when the process exits. A write that fails keeps the counts for the next
one. A worker killed with SIGKILL loses at most its last interval of counts.

Readers add this process's pending counts to what the store holds, so a worker sees its own
requests at once; another worker's (or host's) arrive within one flush interval. With several
workers a quota can therefore be overrun by what the others served in their last interval.

A day's record:

    {"user_id": "usr_..", "day": "2026-12-02", "requests": 12, "samples": 40,
     "rows": [[13, "key_ab12..", "demo", "2xx", 11, 39, 4.2], ...]}

a row being hour, credential (`key_..`, or `session` for a password login), model, status class
(`2xx`, `4xx`, `5xx`), requests, samples, inference milliseconds.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any, NamedTuple

from .background import Batched
from .errors import StorageBusy, StorageUnavailable, ValidationError
from .quotas import Window
from .storage import Store, Transaction
from .storage.shapes import Field

log = logging.getLogger(__name__)

# hour, credential, model, status class -> [requests, samples, inference ms]
Counts = dict[tuple[int, str, str, str], list[float]]


def _rows(value: Any) -> str | None:
    for row in value:
        if not (
            isinstance(row, list)
            and len(row) == 7
            and isinstance(row[0], int)
            and all(isinstance(v, str) for v in row[1:4])
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in row[4:])
        ):
            return "a list of [hour, credential, model, status, requests, samples, ms] rows"
    return None


DAY_SHAPE = {
    "user_id": Field((str,)),
    "day": Field((str,)),
    "requests": Field((int,)),
    "samples": Field((int,)),
    "rows": Field((list,), check=_rows),
}


class Used(NamedTuple):  # a tuple: made on every quota check
    requests_per_day: int = 0
    samples_per_day: int = 0
    requests_per_month: int = 0
    samples_per_month: int = 0


SERVED = "2xx"  # the status class that spends quotas
GROUPS = ("day", "hour", "model", "key", "user")  # what a usage report groups by
MAX_REPORT_DAYS = 366
DAY = re.compile(r"\d{4}-\d\d-\d\d")


class Kept(NamedTuple):
    """A user-day's written totals and those of its month's earlier days (their pending counts
    too) as a quota check reads them: kept while the store's version holds, the month's at most
    `Ledger.MONTH_CACHE_SECONDS` (summing up to 30 days on every check cost more than the
    check)."""

    version: Any
    until: float  # monotonic seconds
    requests: int
    samples: int
    earlier_requests: int
    earlier_samples: int


class PendingDay:
    """A user's UTC day as this process counted it since its last write: its rows, and the
    requests and samples of its answered ones (what a quota check reads on every prediction),
    kept as they grow."""

    __slots__ = ("rows", "requests", "samples")

    def __init__(self) -> None:
        self.rows: Counts = {}
        self.requests = 0
        self.samples = 0

    def add(self, row: tuple[int, str, str, str], totals: list[float]) -> None:
        """Count `totals` (requests, samples, ms) in `row`."""
        _merge(self.rows, row, totals)
        if row[3] == SERVED:
            self.requests += int(totals[0])
            self.samples += int(totals[1])


def record_id(user_id: str, day: str) -> str:
    return f"{user_id}/{day}"


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Ledger(Batched):
    JOB = "usage-ledger"

    MONTH_CACHE_SECONDS = 1.0  # how long a month's earlier days are summed only once

    def __init__(
        self,
        store: Store,
        *,
        flush_seconds: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(flush_seconds)
        self.store = store
        self._monotonic = monotonic
        self._pending: dict[tuple[str, str], PendingDay] = {}
        # (user, day) -> (the store's version, requests, samples) as written: a day's record
        # grows a row per hour, key and model, and decoding it on every quota check cost more
        # the busier the user; read again only when the store changed.
        self._written: dict[tuple[str, str], tuple[Any, int, int]] = {}
        self._kept: dict[tuple[str, str], Kept] = {}  # what a quota check reads (`used`)

    # -- counting ------------------------------------------------------------------------------

    def add(
        self,
        user_id: str,
        *,
        credential: str,
        model: str,
        status: int,
        samples: int,
        inference_ms: float,
        now: float,
    ) -> None:
        """Count one prediction request; costs a dict update."""
        window = Window.at(now)
        row = (window.hour, credential, model, status_class(status))
        with self._lock:
            pending = self._pending.get((user_id, window.day))
            if pending is None:
                pending = self._pending[(user_id, window.day)] = PendingDay()
            pending.add(row, [1, samples, inference_ms])

    def used(self, user_id: str, now: float) -> Used:
        """What `user_id` has used in the UTC day and month of `now`: written by every process,
        plus what this one has pending."""
        key = (user_id, Window.at(now).day)
        version, moment = self.store.version(), self._monotonic()
        kept = self._kept.get(key)
        if kept is None or kept.version != version or moment >= kept.until:
            kept = self._read_totals(key, version, moment)
        requests, samples = kept.requests, kept.samples
        pending = self._pending.get(key)
        if pending is not None:
            requests += pending.requests
            samples += pending.samples
        return Used(
            requests, samples, kept.earlier_requests + requests, kept.earlier_samples + samples
        )

    def _read_totals(self, key: tuple[str, str], version: Any, moment: float) -> Kept:
        """The written totals of user-day `key` and of its month's earlier days, as of store
        version `version`, kept (`Kept`)."""
        user_id, day = key
        requests, samples = self._written_totals(user_id, day)
        today = date.fromisoformat(day)
        earlier_requests = earlier_samples = 0
        for number in range(1, today.day):
            requests_then, samples_then = self._day_totals(
                user_id, today.replace(day=number).isoformat()
            )
            earlier_requests += requests_then
            earlier_samples += samples_then
        kept = Kept(
            version,
            moment + self.MONTH_CACHE_SECONDS,
            requests,
            samples,
            earlier_requests,
            earlier_samples,
        )
        if len(self._kept) > 100_000:
            self._kept.clear()
        self._kept[key] = kept
        return kept

    def _day_totals(self, user_id: str, day: str) -> tuple[int, int]:
        requests, samples = self._written_totals(user_id, day)
        pending = self._pending.get((user_id, day))
        if pending is not None:
            requests += pending.requests
            samples += pending.samples
        return requests, samples

    def _written_totals(self, user_id: str, day: str) -> tuple[int, int]:
        key, version = (user_id, day), self.store.version()
        cached = self._written.get(key)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        record = self.store.get(record_id(user_id, day))
        requests, samples = (record["requests"], record["samples"]) if record else (0, 0)
        if len(self._written) > 100_000:
            self._written.clear()
        self._written[key] = (version, requests, samples)
        return requests, samples

    # -- reading -------------------------------------------------------------------------------

    def rows(
        self, user_ids: list[str] | None, first: date, last: date
    ) -> Iterator[tuple[str, str, int, str, str, str, int, int, float]]:
        """Every counted row of `user_ids` (None: everyone) from day `first` to `last`: (user,
        day, hour, credential, model, status class, requests, samples, ms), written and
        pending alike."""
        merged: dict[tuple[str, str], Counts] = {}
        days = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
        if user_ids is None:
            wanted = set(days)
            found = [(i, r) for i, r in self.store.records() if r["day"] in wanted]
        else:
            ids = [record_id(user, day) for user in user_ids for day in days]
            found = [(i, r) for i in ids if (r := self.store.get(i)) is not None]
        for _, record in found:
            counts = merged.setdefault((record["user_id"], record["day"]), {})
            for hour, credential, model, status, requests, samples, ms in record["rows"]:
                _merge(counts, (hour, credential, model, status), [requests, samples, ms])
        with self._lock:
            for (user, day), pending in self._pending.items():
                if (user_ids is None or user in user_ids) and first.isoformat() <= day <= (
                    last.isoformat()
                ):
                    target = merged.setdefault((user, day), {})
                    for row, totals in pending.rows.items():
                        _merge(target, row, list(totals))
        for (user, day), counts in sorted(merged.items()):
            for (hour, credential, model, status), (requests, samples, ms) in sorted(
                counts.items()
            ):
                yield (
                    user,
                    day,
                    hour,
                    credential,
                    model,
                    status,
                    int(requests),
                    int(samples),
                    round(ms, 3),
                )

    def report(
        self, user_ids: list[str] | None, first: date, last: date, group_by: str
    ) -> dict[str, Any]:
        """What `user_ids` (None: everyone) used from day `first` to `last`, grouped by one of
        GROUPS: per group and in total, the requests (every answer), those that failed (4xx,
        5xx), the samples of answered ones (what quotas count) and the inference ms."""
        groups: dict[str, list[float]] = {}
        for user, day, hour, credential, model, status, requests, samples, ms in self.rows(
            user_ids, first, last
        ):
            label = {
                "day": day,
                "hour": f"{day}T{hour:02d}",
                "model": model,
                "key": credential,
                "user": user,
            }[group_by]
            failed = 0 if status == SERVED else requests
            _merge(groups, label, [requests, failed, samples if not failed else 0, ms])  # type: ignore[arg-type]
        rows = [{group_by: label, **_figures(totals)} for label, totals in sorted(groups.items())]
        total = [sum(t[i] for t in groups.values()) for i in range(4)]
        return {
            "from": first.isoformat(),
            "to": last.isoformat(),
            "group_by": group_by,
            "rows": rows,
            "totals": _figures(total),
        }

    # -- writing -------------------------------------------------------------------------------

    def _keep(self, pending: dict[tuple[str, str], PendingDay]) -> None:
        for key, day in pending.items():
            target = self._pending.setdefault(key, PendingDay())
            for row, totals in day.rows.items():
                target.add(row, totals)

    def _write(self, pending: dict[tuple[str, str], PendingDay]) -> bool:
        def change(items: Transaction) -> None:
            for (user_id, day), counts in pending.items():
                rid = record_id(user_id, day)
                record = items.get(rid)
                if record is None:
                    record = {"user_id": user_id, "day": day, "requests": 0, "samples": 0}
                    record["rows"] = []
                rows: Counts = {tuple(r[:4]): list(r[4:]) for r in record["rows"]}  # type: ignore[misc]
                for row, totals in counts.rows.items():
                    _merge(rows, row, totals)
                record["rows"] = [
                    [*row, int(t[0]), int(t[1]), round(t[2], 3)] for row, t in sorted(rows.items())
                ]
                served = [t for row, t in rows.items() if row[3] == SERVED]
                record["requests"] = sum(int(t[0]) for t in served)
                record["samples"] = sum(int(t[1]) for t in served)
                items[rid] = record

        try:
            self.store.update(change)
        except (StorageBusy, StorageUnavailable, OSError) as exc:
            log.warning("could not write the usage of %d user-day(s): %s", len(pending), exc)
            return False
        return True


def _figures(totals: list[float]) -> dict[str, Any]:
    requests, failed, samples, ms = totals
    return {
        "requests": int(requests),
        "failed": int(failed),
        "samples": int(samples),
        "inference_ms": round(ms, 3),
    }


def usage_range(
    first: str | None, last: str | None, group_by: str | None, *, now: float
) -> tuple[date, date, str]:
    """The days and grouping a usage query asks for (default: this month to the UTC day of
    `now`, by day); 400 naming the field for anything else."""
    today = date.fromisoformat(Window.at(now).day)
    group_by = "day" if group_by is None else group_by
    if group_by not in GROUPS:
        raise ValidationError(
            f"'group_by' must be one of: {', '.join(GROUPS)}", details={"field": "group_by"}
        )
    start, end = _day(first, "from", today.replace(day=1)), _day(last, "to", today)
    if start > end or (end - start).days >= MAX_REPORT_DAYS:
        raise ValidationError(
            f"'from' must be on or before 'to', at most {MAX_REPORT_DAYS} days apart",
            details={"field": "from"},
        )
    return start, end, group_by


def _day(value: str | None, field: str, default: date) -> date:
    if value is None:
        return default
    try:
        if DAY.fullmatch(value):
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise ValidationError(f"'{field}' must be a day such as 2026-12-01", details={"field": field})


def _merge(counts: Counts, row: tuple[Any, ...], totals: list[float]) -> None:
    current = counts.get(row)  # type: ignore[arg-type]
    if current is None:
        counts[row] = list(totals)  # type: ignore[index]
    else:
        for i, value in enumerate(totals):
            current[i] += value
