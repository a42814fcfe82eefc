"""A JSON document on disk, shared safely by threads and worker processes.

Each store is one file `<name>.json` holding `{"schema_version": N, "<collection>": {id: record}}`.

Reads come from an in-memory snapshot that is reused while the file's stat stamp (inode, mtime in
nanoseconds, size) is unchanged, so the request hot path costs one `stat` and never reads the disk
when nothing changed. Every write stamps the new file with an mtime strictly greater than the one it
replaces, so a stamp cannot repeat even when the filesystem recycles an inode.

Writes follow one protocol: take the separate `<name>.json.lock` file lock (with a timeout, mapped
to 503), re-read the file, apply the change, write a temp file in the same directory, fsync it,
`os.replace` it over the old one, fsync the directory. A reader therefore sees the old or the new
version, never a mix, and a writer killed at any point leaves a committed version behind.

Every record is checked against the store's shape (`records.py`) whenever the file is loaded; a
record that does not fit makes the file as unusable as broken JSON, named down to the field.
A file that cannot be parsed is never overwritten: at start-up it stops the server with a message
naming the file; at run time the last good snapshot keeps serving reads and writes answer 503.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from filelock import FileLock, Timeout

from .errors import StorageBusy
from .records import Shape, record_problem

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Items = dict[str, dict[str, Any]]
UNCHANGED: Any = object()  # what a change returns when it found nothing to write


class StoreCorrupt(Exception):
    """A data file exists but is not a valid document of its store; it was left untouched."""


@dataclass(frozen=True)
class Snapshot(Generic[T]):
    """One committed version of a store: records by id plus a derived index. Read-only."""

    items: Items
    index: T
    stamp: tuple[int, int, int] | None


def secure_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it private to the owner (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class JsonStore(Generic[T]):
    def __init__(
        self,
        path: Path,
        *,
        collection: str,
        schema_version: int = 1,
        lock_timeout: float = 10.0,
        index: Callable[[Items], T] = lambda items: None,  # type: ignore[assignment,return-value]
        shape: Shape | None = None,
    ) -> None:
        self.path = path
        self._stat_path = os.fspath(path)  # stat() on a str skips a Path conversion per request
        self.lock_path = path.with_name(path.name + ".lock")
        self.collection = collection
        self.schema_version = schema_version
        self.lock_timeout = lock_timeout
        self._build_index = index
        self._shape = shape
        self._snapshot: Snapshot[T] | None = None
        self._reload = threading.Lock()
        self._locks: dict[int, FileLock] = {}
        self._broken_stamp: tuple[int, int, int] | None = None

    # -- reading ---------------------------------------------------------------------------

    def open(self) -> Snapshot[T]:
        """Load at start-up; raises StoreCorrupt (naming the file) instead of serving bad data."""
        secure_dir(self.path.parent)
        stamp = self._stamp()
        snapshot = self._parse(stamp)
        self._snapshot = snapshot
        return snapshot

    def read(self) -> Snapshot[T]:
        """The current snapshot; costs one stat unless the file changed since the last call."""
        snapshot = self._snapshot
        stamp = self._stamp()
        if snapshot is not None and snapshot.stamp == stamp:
            return snapshot
        with self._reload:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.stamp == stamp:
                return snapshot
            if snapshot is not None and stamp == self._broken_stamp:
                return snapshot
            try:
                self._snapshot = snapshot = self._parse(stamp)
                self._broken_stamp = None
            except StoreCorrupt as exc:
                if snapshot is None:
                    raise StorageBusy(f"data file {self.path.name} is unreadable") from exc
                log.error("%s; serving the last good copy and refusing writes", exc)
                self._broken_stamp = stamp
            return snapshot

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._stat_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _parse(self, stamp: tuple[int, int, int] | None) -> Snapshot[T]:
        if stamp is None:
            items: Items = {}
        else:
            try:
                with open(self.path, encoding="utf-8") as fh:
                    document = json.load(fh)
            except (OSError, ValueError) as exc:
                raise StoreCorrupt(f"data file {self.path} is not valid JSON ({exc})") from None
            items = self._validate(document)
        return Snapshot(items=items, index=self._build_index(items), stamp=stamp)

    def _validate(self, document: Any) -> Items:
        if not isinstance(document, dict):
            raise StoreCorrupt(f"data file {self.path}: expected a JSON object")
        version = document.get("schema_version")
        if version != self.schema_version:
            raise StoreCorrupt(
                f"data file {self.path}: schema_version {version!r}, "
                f"this server reads version {self.schema_version}"
            )
        items = document.get(self.collection)
        if not isinstance(items, dict) or not all(isinstance(v, dict) for v in items.values()):
            raise StoreCorrupt(
                f"data file {self.path}: '{self.collection}' must map ids to objects"
            )
        if self._shape is not None:
            for record_id, record in items.items():
                problem = record_problem(self._shape, record_id, record)
                if problem:
                    raise StoreCorrupt(f"data file {self.path}: record {record_id!r}: {problem}")
        return items

    # -- writing ---------------------------------------------------------------------------

    def update(self, change: Callable[[Items], R], *, timeout: float | None = None) -> R:
        """Apply `change` to a fresh copy of the records under the file lock and commit it.

        `change` mutates the dict it is given and returns a value that `update` passes back. If it
        raises, or returns `UNCHANGED` (it found nothing to do), nothing is written. Raises
        StorageBusy when the lock cannot be had in time or the file on disk is unreadable.
        """
        lock = self._file_lock()
        try:
            lock.acquire(timeout=self.lock_timeout if timeout is None else timeout)
        except Timeout:
            raise StorageBusy(
                f"data file {self.path.name} is locked by another writer; try again",
                headers={"Retry-After": "1"},
            ) from None
        try:
            stamp = self._stamp()
            try:
                current = self._parse(stamp)
            except StoreCorrupt as exc:
                log.error("%s; refusing to write over it", exc)
                raise StorageBusy(
                    f"data file {self.path.name} is unreadable; changes are refused until an "
                    "operator repairs it"
                ) from None
            items = current.items
            result = change(items)
            if result is UNCHANGED:
                return result
            new_stamp = self._write(items, previous=stamp)
            self._snapshot = Snapshot(items=items, index=self._build_index(items), stamp=new_stamp)
            return result
        finally:
            lock.release()

    def _file_lock(self) -> FileLock:
        # A lock object must not cross a fork (gunicorn --preload): one per process.
        pid = os.getpid()
        lock = self._locks.get(pid)
        if lock is None:
            lock = self._locks[pid] = FileLock(str(self.lock_path), mode=0o600)
        return lock

    def _write(
        self, items: Items, *, previous: tuple[int, int, int] | None
    ) -> tuple[int, int, int]:
        directory = self.path.parent
        document = {"schema_version": self.schema_version, self.collection: items}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(document, fh, separators=(",", ":"), sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            mtime = time.time_ns()
            if previous is not None and mtime <= previous[1]:
                mtime = previous[1] + 1
            os.utime(tmp, ns=(mtime, mtime))
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        stamp = self._stamp()
        assert stamp is not None
        return stamp
