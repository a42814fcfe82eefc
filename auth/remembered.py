"""Principals already worked out, kept while the records they were read from are unchanged.

Every authenticated request turns its credential into a `Principal`: the key or session record,
its user, the keys above the key, the scopes and the model lists. Reading them decodes two or
three records, which cost more than the rest of authentication. A process keeps the principal it
worked out for a credential with the versions of the stores it read (`Store.version`, which
changes with any write by any process or host, as every read follows, and never comes back to an
earlier value while the records differ): a later request with the same credential finds it
while those versions hold, and reads afresh as soon as one moved. So a revocation, a disabled
user or a changed key counts at the next request, as before. What changes with time alone (a
key's expiry, a session's) is checked on every request, on the kept records.

Kept records are `Frozen`: one request changing a record in place would change it for every
later request with that credential. The freeze is shallow (a record's lists are shared as they
are): nothing may change what a principal holds.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from typing import Any, Generic, NoReturn, TypeVar

T = TypeVar("T")

MAX_KEPT = 4096  # credentials kept per process, each a few KB; past it the oldest goes


class Frozen(dict):
    """A record that refuses changes; a copy of it (`dict(...)`, `copy`, pickle) is a plain
    dict again. Still a dict to everything that reads or encodes it (JSON included)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a kept record is read-only: change a copy of it (dict(record))")

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return dict, (dict(self),)


def frozen(record: dict[str, Any] | None) -> Any:
    """`record` as a `Frozen` one (None stays None)."""
    return Frozen(record) if record is not None else None


class Remembered(Generic[T]):
    """What was worked out for each credential, with the store versions it was read at."""

    def __init__(self, most: int = MAX_KEPT) -> None:
        self._most = most
        self._kept: dict[Hashable, tuple[Hashable, T]] = {}

    def get(self, credential: Hashable, versions: Hashable) -> T | None:
        """What was kept for `credential` if it was read at `versions`, else None (and what
        was kept at other versions is dropped: it can never match again)."""
        kept = self._kept.get(credential)
        if kept is None:
            return None
        if kept[0] != versions:
            self._kept.pop(credential, None)
            return None
        return kept[1]

    def keep(self, credential: Hashable, versions: Hashable, value: T) -> T:
        """Keep `value` for `credential`, read at `versions` (read them before the records: a
        write between the two then only costs a fresh read at the next request)."""
        kept = self._kept
        if len(kept) >= self._most and credential not in kept:
            kept.pop(next(iter(kept), None), None)  # the oldest kept
        kept[credential] = (versions, value)
        return value
