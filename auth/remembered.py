"""Principals already worked out, kept while the records they were read from are unchanged.

Every authenticated request turns its credential into a `Principal`: the key or session record,
its user, the keys above the key, the scopes and the model lists. Reading them decodes two or
three records, which cost more than the rest of authentication. A process keeps the principal it
worked out for a credential with the versions of the stores it read (`Store.version`, which
changes with any write by any process or host, as every read follows): a later request with the
same credential finds it while those versions hold, and reads afresh as soon as one moved. So a
revocation, a disabled user or a changed key counts at the next request, as before. What
changes with time alone (a key's expiry, a session's) is checked on every request, on the kept
records.

Kept records are read-only views (`frozen`): one request changing a record in place would change
it for every later request with that credential.
"""

from __future__ import annotations

from collections.abc import Hashable
from types import MappingProxyType
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MAX_KEPT = 16_384  # credentials kept per process; past it, the next one starts a fresh set


def frozen(record: dict[str, Any] | None) -> Any:
    """A read-only view of `record` (None stays None)."""
    return MappingProxyType(record) if record is not None else None


class Remembered(Generic[T]):
    """What was worked out for each credential, with the store versions it was read at."""

    def __init__(self, most: int = MAX_KEPT) -> None:
        self._most = most
        self._kept: dict[Hashable, tuple[Hashable, T]] = {}

    def get(self, credential: Hashable, versions: Hashable) -> T | None:
        """What was kept for `credential` if it was read at `versions`, else None."""
        kept = self._kept.get(credential)
        return kept[1] if kept is not None and kept[0] == versions else None

    def keep(self, credential: Hashable, versions: Hashable, value: T) -> T:
        """Keep `value` for `credential`, read at `versions` (read them before the records: a
        write between the two then only costs a fresh read at the next request)."""
        if len(self._kept) >= self._most and credential not in self._kept:
            self._kept.clear()
        self._kept[credential] = (versions, value)
        return value
