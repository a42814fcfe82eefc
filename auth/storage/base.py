"""The storage interface: what the domain code and the app may ask of a store and of a backend.

A *store* holds the records of one collection (users, API keys, sessions, ...), each a JSON
object under a string id, checked against the collection's shape (`shapes.py`) and looked up by
id or through the indexes its owner declares (`indexes.py`). Reads are answered from the
process's own copy, kept in step with every other process and host by the backend; a write is
one `update(change)`: the change gets a `Transaction` (a mapping of the records as committed,
plus what it staged) and whatever it puts, deletes or modifies is committed whole or not at
all, and is visible to every process on every host on its next request once `update` returns.
A change may run more than once (a backend with optimistic transactions runs it again when
another writer got there first), so it must not have effects outside the records.

A *backend* (`Storage`) makes the stores, keeps them in step (`sync`, once per request) and
does its own upkeep when asked (`maintain`); it also keeps the token signing secret and the audit
trail.

Two backends implement this: the journaled JSON files of one host (`json.py`, the embedded
default) and Redis, shared by many hosts (`redis.py`). Callers never name a backend's class:
`open_storage` (in `__init__`) builds the one the configuration names.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from .indexes import Index
from .shapes import Shape, record_problem

R = TypeVar("R")
Record = dict[str, Any]
UNCHANGED: Any = object()  # what a change returns when it found nothing to write


class StoreCorrupt(Exception):
    """Stored data is not a valid record of its store (naming where, which record and field);
    it was left untouched."""


def check_record(where: str, shape: Shape | None, record_id: str, record: Any) -> None:
    """StoreCorrupt naming `where` (a file, a Redis key), the record and the field when
    `record` is not an object that fits `shape`."""
    if not isinstance(record, dict):
        raise StoreCorrupt(f"{where}: record {record_id!r} must be an object")
    problem = record_problem(shape, record_id, record) if shape is not None else None
    if problem:
        raise StoreCorrupt(f"{where}: record {record_id!r}: {problem}")


def encode(record: Record) -> bytes:
    return orjson.dumps(record)


def decode(raw: bytes) -> Record:
    return orjson.loads(raw)


class Transaction(MutableMapping[str, Record]):
    """The records as a change inside `Store.update` sees them: reads give fresh dicts (so a
    change may modify what it read), assignment and `put` stage a record, `del` a deletion."""

    @abstractmethod
    def put(self, record_id: str, record: Record) -> None: ...

    @abstractmethod
    def find(self, index: str, key: str) -> Record | None:
        """The record a unique index files under `key`, or None."""

    @abstractmethod
    def ids(self, index: str, key: str) -> list[str]:
        """The ids a (non-unique) index files under `key`."""


class Store(Protocol):
    """The records of one collection."""

    name: str  # what the store is called in messages and on disk ("users")
    collection: str  # what its records are filed under ("users", "keys")
    shape: Shape | None
    indexes: Mapping[str, Index]

    def open(self) -> None:
        """Check the stored data at start-up: raises StoreCorrupt naming file or key, record and
        field, instead of serving bad data."""

    def get(self, record_id: str | None) -> Record | None:
        """A fresh copy of record `record_id`, or None."""

    def find(self, index: str, key: str) -> Record | None:
        """The record a unique index files under `key`, or None."""

    def ids(self, index: str, key: str) -> list[str]:
        """The ids a (non-unique) index files under `key`."""

    def records(self) -> list[tuple[str, Record]]:
        """Every (id, record): O(N), for listings and sweeps, never for requests."""

    def __len__(self) -> int: ...

    def version(self) -> Any:
        """A value that changes whenever the records may have changed, and never comes back
        to an earlier value while they differ from what they were then: a process keeps what
        it worked out from records beside the version it read them at (`remembered.py`)."""

    def update(self, change: Callable[[Transaction], R], *, timeout: float | None = None) -> R:
        """Run `change` on the records and commit what it changed; `UNCHANGED` (or an
        exception) commits nothing. StorageBusy / StorageUnavailable when it cannot."""

    def put_unread(self, puts: Mapping[str, Record]) -> None:
        """Write `puts` without reading first, the last write winning: for bookkeeping written
        far more often than read (when keys were used)."""

    def warm(self, indexes: Iterable[str] | None = None) -> None:
        """Load the records and build `indexes` (default: all) now, so that no request pays."""

    def problem(self) -> str | None:
        """Why this store cannot be read or written now (for readiness checks), or None."""

    def close(self) -> None:
        """Let go of what the store holds; the next read loads again."""


class AuditTrail(Protocol):
    """Where a backend keeps the audit events: appended whole, read back oldest first."""

    name: str  # for messages: "audit.log", "the Redis stream inference:audit"

    def append(self, entry: Record) -> None:
        """Keep `entry`; OSError (or a lock Timeout) when it cannot be kept."""

    def entries(self) -> Iterator[Record]:
        """Every event kept, oldest first."""

    def copy_to(self, directory: Path) -> list[str]:
        """Write the events into `directory` as the JSON backend's `audit.log` files; returns
        the names written."""


class Storage(Protocol):
    """A backend: makes the stores and keeps what is not a record."""

    backend: str  # "json" or "redis"
    audit: AuditTrail
    # Whether its calls block the process (then a server runs its background work on a real
    # thread, not on the event loop) or cooperate with an event loop.
    blocking: bool

    def store(
        self,
        name: str,
        *,
        collection: str,
        shape: Shape,
        indexes: Mapping[str, Index] | None = None,
        intern_ids: bool = False,
    ) -> Store:
        """The store `name` (made on first use), its records filed under `collection`."""

    def stores(self) -> list[Store]:
        """Every store made so far."""

    def sync(self) -> None:
        """Bring every store of this process in step with the others, cheaply (the server calls
        it once per request, before reading anything); until `end_request`, reads trust it."""

    def end_request(self) -> None:
        """The request `sync` began is answered."""

    def maintain(self) -> None:
        """Upkeep that must not run on a request (folding journals): the server asks for it on
        its background thread."""

    def shutdown(self) -> list[str]:
        """This process is done with the data: leave it whole for whoever reads it next (the
        JSON files fold each journal into its snapshot, so a stopped data dir reads as whole
        documents). Safe beside other processes still at work; returns what it folded."""

    def close(self) -> None:
        """Let go of every store's copy and of any connection."""

    def problems(self) -> list[str]:
        """Why any store cannot be read or written now."""

    def backup(self, target: Path) -> list[str]:
        """Copy every store into directory `target` as files a JSON backend reads; returns
        the names written."""

    def describe(self) -> str:
        """Where the data lives, for messages (never a password)."""

    def replace_secret(self, secret: str) -> None:
        """Keep `secret` as the token signing secret, whatever was kept before (a migration)."""

    def secret_place(self) -> str:
        """Where the kept secret lives, for messages."""

    def kept_secret(self, make: Callable[[], str] | None = None) -> str | None:
        """The token signing secret this backend keeps, or None; with `make`, one is made when
        there is none, once for every process and host (the first one kept wins)."""


@dataclass(frozen=True)
class StoreSpec:
    """What a store is made from: its name, the collection its records are filed under, their
    shape, its indexes, and whether record ids are interned (many records, read often)."""

    name: str
    collection: str
    shape: Shape
    indexes: Mapping[str, Index]
    intern_ids: bool


class Backend:
    """What every backend does alike: it makes each store once, by name, and keeps it."""

    def __init__(self) -> None:
        self._stores: dict[str, Any] = {}

    def store(
        self,
        name: str,
        *,
        collection: str,
        shape: Shape,
        indexes: Mapping[str, Index] | None = None,
        intern_ids: bool = False,
    ) -> Any:
        store = self._stores.get(name)
        if store is None:
            spec = StoreSpec(name, collection, shape, indexes or {}, intern_ids)
            store = self._stores[name] = self._make(spec)
        return store

    def _make(self, spec: StoreSpec) -> Store:
        """The backend's store for `spec`."""
        raise NotImplementedError

    def stores(self) -> list[Any]:
        return list(self._stores.values())

    def problems(self) -> list[str]:
        return [problem for problem in (s.problem() for s in self.stores()) if problem]

    def close(self) -> None:
        for store in self.stores():
            store.close()


class ReadsCopy:
    """How a store reads the copy of its records a process holds (both backends keep one):
    `_current()` is the copy brought up to date as the backend does it, with its `records`
    (id -> JSON) and `indexes`; `_mutex` guards a first index build."""

    _mutex: Any

    def _current(self) -> Any:
        raise NotImplementedError

    def get(self, record_id: str | None) -> Record | None:
        """A fresh copy of record `record_id`, or None."""
        raw = self._current().records.get(record_id) if record_id is not None else None
        return decode(raw) if raw is not None else None

    def find(self, index: str, key: str) -> Record | None:
        """The record a unique index files under `key`, or None."""

        def look(copy: Any) -> bytes | None:
            record_id = copy.indexes.one(index, key, copy.records)
            return copy.records.get(record_id) if record_id is not None else None

        raw = self._look_up(index, look)  # the id and its record from one look at the copy
        return decode(raw) if raw is not None else None

    def ids(self, index: str, key: str) -> list[str]:
        """The ids a (non-unique) index files under `key`."""
        return self._look_up(index, lambda copy: copy.indexes.all(index, key, copy.records))

    def warm(self, indexes: Iterable[str] | None = None) -> None:
        """Load the records and build `indexes` (default: all) now, so that no request pays."""
        with self._mutex:
            copy = self._current()
            copy.indexes.build(copy.records, indexes)

    def _look_up(self, index: str, look: Callable[[Any], R]) -> R:
        """`look` at the copy: at once when the index is built (a writer holding the mutex
        never holds up a lookup), else under the mutex (a first build or a scan walks the
        records: no change meanwhile)."""
        copy = self._current()
        if copy.indexes.has(index):
            return look(copy)
        with self._mutex:
            return look(self._current())
