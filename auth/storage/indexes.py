"""Lookups kept beside a store's records, built on first use and then kept up by each change.

An index files each record under the keys `Index.keys(record)` lists: a unique index maps a key
to one id (usernames, key hashes), any other to the ids that hold it (the sessions of a user).
A table is built from all records the first time it is consulted, or by `JsonStore.warm` (a
server worker builds the key-hash table before its first request and the others just after, on
its background thread); from then on every change a process applies, its own or another
process's, updates it, so lookups never scan. The exception is a process that has not built a
unique table whose index says which bytes its key `appears` as (the CLI, looking up one user):
it scans the records for those bytes instead of building the table. A store that reloads from
scratch builds its tables again.

Records are held as JSON bytes; building a table decodes each record at most once, and a record
lacking the `only_if` bytes of every table being built not at all.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

Record = dict[str, Any]


@dataclass(frozen=True)
class Index:
    """`keys(record)`: the keys a record is filed under. `only_if`: bytes that every record with
    keys contains in its JSON (as orjson writes it), so that building the table decodes only
    those: an index of the few active admins among 100,000 users costs a substring search."""

    keys: Callable[[Record], Iterable[str]]
    unique: bool = True
    only_if: bytes | None = None
    # Bytes that the JSON of every all-ASCII record filed under `key` contains once lower-cased,
    # or None when that cannot be said. A process that has not built the table (the CLI,
    # looking up one user) then scans for them instead of decoding every record to build it;
    # records holding other characters (which may fold to the key) are always decoded.
    appears: Callable[[str], bytes | None] | None = None


class Indexes:
    """The tables of one process's copy of a store. A non-unique entry holds one id as a str
    and several as a list, which keeps the usual one-session-per-user case small."""

    def __init__(self, specs: Mapping[str, Index]) -> None:
        self.specs = specs
        self._tables: dict[str, dict[str, Any]] = {}

    def one(self, name: str, key: str, records: Mapping[str, bytes]) -> str | None:
        if name not in self._tables:
            needle = self._needle(name, key)
            if needle is not None:
                return next(self._scan(name, key, needle, records), None)
        return self._table(name, records).get(key)

    def _needle(self, name: str, key: str) -> bytes | None:
        appears = self.specs[name].appears
        return appears(key) if appears is not None else None

    def _scan(
        self, name: str, key: str, needle: bytes, records: Mapping[str, bytes]
    ) -> Iterator[str]:
        keys = self.specs[name].keys
        for record_id, raw in records.items():
            maybe = needle in raw.lower() or not raw.isascii()
            if maybe and key in keys(orjson.loads(raw)):
                yield record_id

    def all(self, name: str, key: str, records: Mapping[str, bytes]) -> list[str]:
        held = self._table(name, records).get(key)
        if held is None:
            return []
        return [held] if isinstance(held, str) else list(held)

    def build(self, records: Mapping[str, bytes], names: Iterable[str] | None = None) -> None:
        """Build the tables `names` (default: all not built yet) in one pass over `records`."""
        wanted = [n for n in (self.specs if names is None else names) if n not in self._tables]
        if not wanted:
            return
        tables: dict[str, dict[str, Any]] = {name: {} for name in wanted}
        specs = [self.specs[n] for n in wanted]
        fill = [(tables[n], self.specs[n].keys, self.specs[n].unique) for n in wanted]
        # When every table wanted has an `only_if`, a record holding none of those bytes is
        # skipped without decoding.
        filters = [spec.only_if for spec in specs]
        screen = None if None in filters else filters
        if screen is not None and len(screen) == 1:
            (needle,) = screen
            records = {i: raw for i, raw in records.items() if needle in raw}
            screen = None
        collecting = gc.isenabled()
        gc.disable()  # a pass over every record allocates much and frees all: nothing to collect
        try:
            for record_id, raw in records.items():
                if screen is not None and not any(f in raw for f in screen):
                    continue
                record = orjson.loads(raw)
                for table, keys, unique in fill:
                    if unique:  # the usual case, inlined: this loop runs per record at start
                        for key in keys(record):
                            table[key] = record_id
                    else:
                        for key in keys(record):
                            _file(table, key, record_id, unique)
        finally:
            if collecting:
                gc.enable()
        self._tables.update(tables)

    def add(self, record_id: str, record: Record) -> None:
        for name, table in self._tables.items():
            spec = self.specs[name]
            for key in spec.keys(record):
                _file(table, key, record_id, spec.unique)

    def remove(self, record_id: str, record: Record) -> None:
        for name, table in self._tables.items():
            for key in self.specs[name].keys(record):
                held = table.get(key)
                if held == record_id:
                    del table[key]
                elif isinstance(held, list) and record_id in held:
                    held.remove(record_id)
                    if len(held) == 1:
                        table[key] = held[0]

    def apply(
        self, records: dict[str, bytes], puts: Mapping[str, bytes], deletes: Iterable[str]
    ) -> None:
        """Apply one change (encoded records to put, ids to delete) to `records`, and to the
        tables built so far."""
        built = bool(self._tables)
        for record_id in deletes:
            old = records.pop(record_id, None)
            if built and old is not None:
                self.remove(record_id, orjson.loads(old))
        for record_id, raw in puts.items():
            old = records.get(record_id)
            if built and old is not None:
                self.remove(record_id, orjson.loads(old))
            records[record_id] = raw
            if built:
                self.add(record_id, orjson.loads(raw))

    def has(self, name: str) -> bool:
        return name in self._tables

    @property
    def built(self) -> bool:
        """True if any table is kept (only then must a change decode records to update it)."""
        return bool(self._tables)

    def _table(self, name: str, records: Mapping[str, bytes]) -> dict[str, Any]:
        table = self._tables.get(name)
        if table is None:
            self.build(records, [name])
            table = self._tables[name]
        return table


def _file(table: dict[str, Any], key: str, record_id: str, unique: bool) -> None:
    if not unique:
        # Keys many records share are often ids of another store (the user of a session or a
        # key): interned, every table and the users store hold one copy of each.
        key = sys.intern(key)
    held = table.get(key)
    if unique or held is None or held == record_id:
        table[key] = record_id
    elif isinstance(held, list):
        held.append(record_id)
    else:
        table[key] = [held, record_id]
