"""The transaction view both backends give a change inside `Store.update`.

Reads decode fresh dicts from the committed records, so a change may modify what it read; `put`,
item assignment and `del` stage writes. At commit, the records staged or modified (compared with
what was read) are what the backend writes: one journal line, or one script call. `find` and `ids`
consult the indexes as committed before this change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .base import Record, Transaction, decode, encode
from .indexes import Indexes


class StagedRecords(Transaction):
    """A change's view of one store's committed `records` (see the top)."""

    def __init__(
        self,
        records: dict[str, bytes],
        indexes: Indexes,
        *,
        check: Callable[[str, Record], None],
    ) -> None:
        self._records = records  # as committed: not changed by this view
        self._indexes = indexes
        self._check = check
        self._read: dict[str, Record] = {}
        self._put: dict[str, Record] = {}
        self._deleted: set[str] = set()

    def __getitem__(self, record_id: str) -> Record:
        if record_id in self._put:
            return self._put[record_id]
        if record_id in self._deleted or record_id not in self._records:
            raise KeyError(record_id)
        record = self._read.get(record_id)
        if record is None:
            record = self._read[record_id] = decode(self._records[record_id])
        return record

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._put or (
            record_id not in self._deleted and record_id in self._records
        )

    def __iter__(self) -> Iterator[str]:
        yield from self._put
        for record_id in list(self._records):
            if record_id not in self._put and record_id not in self._deleted:
                yield record_id

    def __len__(self) -> int:
        committed = self._records
        fresh = sum(1 for record_id in self._put if record_id not in committed)
        gone = sum(1 for record_id in self._deleted if record_id in committed)
        return len(committed) + fresh - gone

    def __setitem__(self, record_id: str, record: Record) -> None:
        self.put(record_id, record)

    def __delitem__(self, record_id: str) -> None:
        if record_id not in self:
            raise KeyError(record_id)
        self._put.pop(record_id, None)
        self._read.pop(record_id, None)
        self._deleted.add(record_id)

    def put(self, record_id: str, record: Record) -> None:
        self._deleted.discard(record_id)
        self._read.pop(record_id, None)
        self._put[record_id] = record

    def find(self, index: str, key: str) -> Record | None:
        """The record a unique index files under `key`, or None."""
        record_id = self._indexes.one(index, key, self._records)
        return self.get(record_id) if record_id is not None else None

    def ids(self, index: str, key: str) -> list[str]:
        """The ids a (non-unique) index files under `key`."""
        return [i for i in self._indexes.all(index, key, self._records) if i in self]

    def changes(self) -> tuple[dict[str, bytes], list[str]]:
        """What to commit: encoded records to put, ids to delete. A record that does not fit
        the store's shape is a bug of the change, never written where it would stop the store."""
        puts = {}
        for record_id, record in [*self._put.items(), *self._read.items()]:
            raw = encode(record)
            if raw != self._records.get(record_id):
                self._check(record_id, record)
                puts[record_id] = raw
        deletes = [i for i in self._deleted if i in self._records]
        return puts, deletes
