"""When API keys were last used: noted in memory on the request, written in batches off it.

A request that presents a key only notes the time in this process's memory (at most once a minute
per key). What was noted is written to the store in one change every `flush_seconds` by a
background job (`background.run_every`; the write runs on a real thread when the storage blocks)
and once more when the process exits. So no request ever waits for a lock or an fsync over
bookkeeping: with a thousand keys in rotation the old way put one fsynced rewrite on every key's
first request of each minute. The write does not read the store (`Store.put_unread`; the JSON
files append it, unless the snapshot's first line is not a sealed one): a worker holds every
key's last use in memory only if it lists keys. Of two workers
that noted the same key within a minute, the later flush wins, which may be the earlier use by a few
seconds.

Readers merge what this process noted but has not written yet, so a key's owner sees its use at
once; another worker's notes arrive within one flush interval. A process killed with SIGKILL
loses at most its last interval of `last_used`: bookkeeping, not state.
"""

from __future__ import annotations

import logging

from .api_keys import LAST_USED_EVERY_SECONDS
from .background import Batched
from .errors import StorageBusy, StorageUnavailable
from .storage import Store
from .storage.shapes import iso

log = logging.getLogger(__name__)


class KeyUsage(Batched):
    JOB = "key-usage"

    def __init__(self, store: Store, *, flush_seconds: float = 5.0) -> None:
        super().__init__(flush_seconds)
        self.store = store
        self._noted: dict[str, int] = {}  # key id -> when this process last noted it
        self._pending: dict[str, int] = {}  # noted, not yet written

    def note(self, key_id: str, now: int) -> None:
        """Remember that `key_id` was used at `now`; costs a dict lookup on the request."""
        if now - self._noted.get(key_id, 0) < LAST_USED_EVERY_SECONDS:
            return
        with self._lock:
            self._noted[key_id] = now
            self._pending[key_id] = now

    def last_used(self, key_ids: list[str]) -> dict[str, str]:
        """Key id -> last use of `key_ids`, as written by every process plus what this one has
        pending."""
        seen = {}
        for key_id in key_ids:
            record = self.store.get(key_id)
            if record is not None:
                seen[key_id] = record["last_used"]
        with self._lock:
            for key_id in key_ids:
                if key_id in self._pending:
                    seen[key_id] = iso(self._pending[key_id])
        return seen

    def _keep(self, pending: dict[str, int]) -> None:
        for key_id, ts in pending.items():
            self._pending[key_id] = max(ts, self._pending.get(key_id, 0))

    def _write(self, pending: dict[str, int]) -> bool:
        try:
            self.store.put_unread(
                {key_id: {"last_used": iso(ts)} for key_id, ts in pending.items()}
            )
        except (StorageBusy, StorageUnavailable, OSError) as exc:
            log.warning("could not write the last use of %d key(s): %s", len(pending), exc)
            return False
        return True
