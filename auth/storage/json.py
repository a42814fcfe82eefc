"""Records on disk, shared by threads and worker processes, at a cost that follows the change.

Each store is two files: a snapshot `<name>.json` (one JSON document, one record per line: see
`snapshot.py`) and a journal `<name>.journal.jsonl` (a generation, then one line per change: see
`journal.py`). A change is appended and synced to disk (`fdatasync`) under the separate
`<name>.json.lock` file lock (with a timeout, mapped to 503) before it is acknowledged.

Each process keeps the records in memory as compact JSON bytes (a third of the size of dicts) with
its indexes (`indexes.py`), plus the journal offset it has applied. A read costs one look at the
store's change counter, a number in shared memory bumped by every holder of the file lock
(`changes.py`): no syscall. Only when it moved, or `RECHECK_SECONDS` after the last look (for files
changed by hand), does a read look at the files: a `stat` of the counter file (in case it was
replaced) and of the journal (a write, a listing or a readiness check also stats the snapshot); when
the journal grew, only the new lines are read and applied, and the indexes are updated by the
change. A line without its newline is a write in progress or a writer that died mid-append: readers
stop before it and the next writer cuts it off, so a change is either wholly there or not at all.

A new store is created as an empty snapshot of generation 1 and its journal, so every process
attaches to the same journal from its start, and a journal missing beside its snapshot is always a
loss (refused), never a new store.

When a write leaves the journal longer than half the snapshot (and than `compact_floor`, 256 KiB by
default), it schedules `compact`, which folds the journal into a new snapshot with generation G+1
(the server runs it on a background thread, off the event loop): fsynced temp files for the snapshot
and a fresh journal, `os.replace` of the snapshot, then of the journal, then an fsync of the
directory (a store without a journal is given one of generation G first). A crash between the two
replaces leaves a journal of generation G beside a snapshot of G+1, which already holds all of it,
so the journal is ignored. Processes that had applied the old journal on top of the snapshot the
compaction started from (the new journal's header names both) read its last lines through the
descriptor they hold and go on with the new one: nobody reloads the snapshot because somebody else
compacted. A process that stops cleanly folds every journal holding a change (`fold`, through
`JsonStorage.shutdown`), as does `storage compact`, so that a stopped data dir reads as whole JSON
documents an operator can edit.

A sealed snapshot loads by splitting lines, its records unchecked (they were checked before they
were written); any other is parsed whole and every record checked against the store's shape
(`shapes.py`), and `open` then seals it at once (`_seal`: a compaction under the lock), so the
slow path is taken once, at the first start, not until the journal grows long enough. That is the
previous version's document (its file kept as `NAME.json.v1.bak` until the new snapshot is in
place, then removed: the new one holds every record of it) or a hand edit. A hand edit is first
held against the journal: each record's first change there notes what the record was before it
(`journal.py`), and one that does not start from what the edited snapshot holds means the
operator edited a record the journal also changed; the load refuses (StoreCorrupt naming both
files and the record) instead of replaying the journal over the edit. A sealed snapshot skips
that comparison. Records arriving through the journal are checked as they are applied, and
records are checked before they are written.
A file that cannot be parsed or a record that does not fit is never overwritten: `open` raises
StoreCorrupt naming the file (record, field), so the server does not start on it; at run time a
process keeps serving reads from its last good state and writes answer 503 (a process without one
answers 503 to reads too).

Inside `update`, a change sees a `StagedRecords` mapping (`staged.py`): what it reads is decoded
into fresh dicts, and at commit only the records it put, deleted or modified are written.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from ..errors import StorageBusy, StorageUnavailable
from ..signals import timed_write
from . import journal as journal_file
from . import snapshot as snapshot_file
from .audit_file import AuditFile
from .base import (
    UNCHANGED,
    Backend,
    ReadsCopy,
    Record,
    StoreCorrupt,
    StoreSpec,
    Transaction,
    check_record,
    decode,
    encode,
)
from .changes import ChangeCounter
from .indexes import Index, Indexes
from .shapes import Shape
from .staged import StagedRecords

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")
# What the disk may answer a write with that is the operator's to fix, not a bug: full, over
# quota, read-only, permissions, failing hardware, file too large.
REFUSED_WRITES = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.EFBIG,
}
SECRET_FILE = "jwt_secret"  # the token signing secret, when the config sets none
COMPACT_FLOOR = 256 * 1024  # a journal smaller than this is never worth compacting
# How long a read trusts the change counter alone: a file edited by hand, or written by a
# process that does not count its changes, is seen within this long.
RECHECK_SECONDS = 1.0


def secure_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it private to the owner (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _digests(records: dict[str, bytes], ids: list[str]) -> dict[str, str | None]:
    """What each of `ids` was in `records`, as a journal line's `was` notes it."""
    digest = journal_file.digest
    return {i: None if (raw := records.get(i)) is None else digest(raw) for i in ids}


def fsync_dir(directory: Path) -> None:
    """Make the names in `directory` durable (after a rename or a new file in it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _State:
    """What one process has applied: the records (JSON bytes by id), their indexes, and where
    in which journal it stands."""

    records: dict[str, bytes]
    indexes: Indexes
    generation: int
    snapshot: tuple[int, int, int] | None  # stamp of the snapshot file this state started from
    snapshot_size: int
    journal_fd: int | None = None  # kept open: after a compaction its last lines stay readable
    journal_ino: int | None = None
    offset: int = 0  # end of the last complete line applied
    seen_size: int = 0  # journal size at the last look (a torn tail stays unread)
    stale_journal: bool = False  # the journal predates the snapshot: the next writer resets it
    kind: str | None = None  # what the snapshot was found to be (`snapshot.py`), None: no file
    # When the snapshot was edited by hand: the ids whose first journal change has been
    # compared with it (see `_check_edit`); None when it is as written (no comparison at all).
    edited: set[str] | None = None
    broken: tuple[Any, ...] | None = None  # stamps of files found unreadable
    changes_seen: int = -1  # the change counter when the files last matched this state
    recheck_at: float = 0.0  # when to look at the files even if the counter did not move

    def close(self) -> None:
        if self.journal_fd is not None:
            os.close(self.journal_fd)
            self.journal_fd = None

    def __del__(self) -> None:  # a raw descriptor, not a file object: close it ourselves
        self.close()


@dataclass
class JsonStore(ReadsCopy):
    path: Path
    collection: str
    lock_timeout: float = 10.0
    shape: Shape | None = None
    indexes: Mapping[str, Index] = field(default_factory=dict)
    # Whether the owner asks for compaction (`maintain`) off the requests, as the server does on
    # its background thread so that no request waits on O(N) work; otherwise the write that
    # finds the journal too long compacts it.
    maintained: bool = False
    compact_floor: int = COMPACT_FLOOR  # bytes of journal never worth compacting
    # Intern the record ids: for a store whose ids other stores' indexes are keyed by (users),
    # so that each id is held once in memory.
    intern_ids: bool = False
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.name = self.path.stem
        self.journal_path = self.path.with_name(self.path.stem + ".journal.jsonl")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.changes = ChangeCounter(self.path.with_name(self.path.name + ".changes"))
        self._snapshot_path = os.fspath(self.path)  # stat() on a str skips a conversion
        self._journal_path = os.fspath(self.journal_path)
        self._state: _State | None = None
        self._mutex = threading.RLock()
        self._locks: dict[int, FileLock] = {}
        self._compaction_due = False
        self._sealed: tuple[int, int, int] | None = None  # stamp of a snapshot whose seal held

    # -- reading ---------------------------------------------------------------------------

    def open(self) -> None:
        """Check the files at start-up: raises StoreCorrupt naming file, record and field
        instead of serving bad data. The records are loaded when first read (or by `warm`), so
        a process that only checks (the server's start, before its workers) or touches one
        store (the CLI) never loads the others; a sealed snapshot is checked by its hash."""
        secure_dir(self.path.parent)
        kind = None
        head_sealed = snapshot_file.sealed_generation(self._snapshot_path) is not None
        if not head_sealed:
            # Not sealed, by its first line (the previous version's document): check it and
            # convert it in one load under the lock, not one load each (seconds at 100,000).
            kind = self._seal()
        if kind is None:
            with self._mutex:
                kind = self._load(keep=False).kind
            if kind in (snapshot_file.UPGRADE, snapshot_file.EDIT) and head_sealed:
                self._seal()  # a first line intact above records edited by hand
        if not self.path.exists() and not self.journal_path.exists():
            self._create()
        try:
            with self._locked(0):
                self._remove_dead_temp_files()
                if kind == snapshot_file.SEALED:
                    self._backup_path.unlink(missing_ok=True)  # left by a crash after commit
        except StorageBusy:
            pass  # a writer is at work: the next compaction cleans up

    def _seal(self) -> str | None:
        """Fold a snapshot that is not sealed (the previous version's document, or a hand edit
        found to fit) and its journal into a sealed snapshot now, so that this store is back on
        the fast path at its first start instead of at its first compaction: every later load
        cuts lines instead of parsing and checking every record. Under the lock and checked
        again, so of several processes starting together one converts. The previous version's
        file is kept as `NAME.json.v1.bak` until the new snapshot is in place, then removed: the
        new one holds every record of it. A failure leaves the old file in place and usable (it
        is read the slow way, and the next start tries again). Returns what the snapshot was
        found to be under the lock (its records checked), or None when it was not read."""
        kind = None
        try:
            with self._locked(None):
                with self._mutex:
                    loaded = self._state is not None
                    state = self._load()
                kind = state.kind
                try:
                    self._convert(state)
                finally:
                    if not loaded:
                        with self._mutex:
                            self.close()
        except (StorageBusy, StorageUnavailable, OSError) as exc:
            log.warning(
                "could not convert %s to the sealed format (%s): it is read as it is, the "
                "slow way, until a start converts it",
                self.path.name,
                getattr(exc, "description", None) or exc,
            )
        return kind

    def _convert(self, state: _State) -> None:
        """`_seal`'s work, under the lock, on `state` just loaded from the files."""
        if state.kind == snapshot_file.UPGRADE:
            backup = self._keep_backup()
            self.compact()
            backup.unlink()
            fsync_dir(self.path.parent)
            log.info("converted %s to the sealed format", self.path.name)
        elif state.kind == snapshot_file.EDIT:
            self.compact()
            log.info("%s was edited by hand: folded and sealed again", self.path.name)

    @property
    def _backup_path(self) -> Path:
        return self.path.with_name(self.path.name + ".v1.bak")

    def _keep_backup(self) -> Path:
        """The snapshot as it is now, as `NAME.json.v1.bak` beside it (a hard link: the
        compaction replaces the snapshot's name, never its bytes), durable before the
        conversion starts. A backup left by a conversion that crashed is replaced."""
        backup = self._backup_path
        temp = backup.with_name(f".{self.path.name}.v1.bak.tmp")
        temp.unlink(missing_ok=True)
        try:
            os.link(self.path, temp)
        except OSError:  # a file system without hard links: a copy
            os.replace(self._write_temp(temp, [self.path.read_bytes()]), temp)
        os.replace(temp, backup)
        fsync_dir(self.path.parent)
        return backup

    def _create(self) -> None:
        """Give a new store its files at once: an empty snapshot of generation 1 and its
        journal. Every process then attaches to that one journal from its start and reads a
        change appended later through its descriptor, even if the file is deleted before it
        looked; and a journal missing beside its snapshot is always seen as lost, never taken
        for a new store."""
        with self._locked(None):
            if not self.path.exists() and not self.journal_path.exists():
                self.compact()

    def _remove_dead_temp_files(self) -> None:
        """Temp files left by writers killed mid-compaction (only under the lock: then no
        writer of this store is alive to own one)."""
        for name in (self.path.name, self.journal_path.name):
            for leftover in self.path.parent.glob(f".{name}.*.tmp"):
                log.warning("removing %s, left by a writer that died", leftover.name)
                leftover.unlink(missing_ok=True)

    def close(self) -> None:
        """Let go of the files (and the records in memory); the next read loads again."""
        with self._mutex:
            if self._state is not None:
                self._state.close()
                self._state = None
            self.changes.close()

    def problem(self) -> str | None:
        """Why this store cannot take writes now (for readiness checks), or None."""
        try:
            state = self._current(full=True)
        except StorageBusy as exc:
            return exc.description
        if state.broken:
            return f"data file {self.path.name} is unreadable; writes are refused"
        if not os.access(self.path.parent, os.W_OK):
            return f"the data dir is not writable for {self.path.name}"
        return None

    def records(self) -> list[tuple[str, Record]]:
        """Every (id, record), decoded: O(N), for listings and sweeps, not for requests."""
        return [(i, decode(raw)) for i, raw in list(self._current(full=True).records.items())]

    def __len__(self) -> int:
        return len(self._current().records)

    def version(self) -> tuple[Any, ...]:
        """Changes whenever the records may have changed."""
        state = self._current()
        return (state.generation, state.journal_ino, state.offset, state.snapshot)

    def _current(self, *, full: bool = False) -> _State:
        state = self._state
        if (
            state is not None
            and not full
            and state.changes_seen == self.changes.read()
            and self.clock() < state.recheck_at
        ):
            return state
        with self._mutex:
            self.changes.replaced()
            seen = self.changes.read()  # before the files: a change after it moves it again
            state = self._state
            if state is not None and self._unchanged(state, full=full):
                return self._followed(state, seen)
            stamps = self._stamps()
            if state is not None and state.broken == stamps:
                return state
            try:
                if state is None:
                    return self._followed(self._load(), seen)
                self._catch_up(state)
            except StoreCorrupt as exc:
                if self._state is None:
                    raise StorageBusy(f"data file {self.path.name} is unreadable") from exc
                log.error("%s; serving the last good copy and refusing writes", exc)
                self._state.broken = stamps
                return self._state
            return self._followed(self._state, seen)

    def _followed(self, state: _State, seen: int) -> _State:
        """`state` matches the files as of change count `seen`: reads trust the counter."""
        if not state.broken:
            state.changes_seen = seen
            state.recheck_at = self.clock() + RECHECK_SECONDS
        return state

    def _stamps(self) -> tuple[Any, ...]:
        return (_stamp(self._snapshot_path), _stamp(self._journal_path))

    def _unchanged(self, state: _State, *, full: bool = False) -> bool:
        """True if the files still hold what `state` has applied, judged by the journal alone
        (one stat: every change and every compaction changes the journal) unless `full`, when
        the snapshot is looked at too. Only a snapshot replaced by hand while the server runs
        escapes the journal; a write, a listing, /ready or the next change of the journal sees
        it."""
        journal = _stamp(self._journal_path)
        if journal is None:
            if state.journal_ino is not None:
                return False
        elif journal[0] != state.journal_ino or journal[2] != state.seen_size:
            return False
        elif not full:
            return True
        return _stamp(self._snapshot_path) == state.snapshot

    # -- loading and catching up -----------------------------------------------------------

    def _load(self, *, keep: bool = True) -> _State:
        """Read snapshot and journal from scratch; raises StoreCorrupt. With `keep` false,
        only check them: a sealed snapshot's records are not even split out."""
        snapshot = _stamp(self._snapshot_path)
        records: dict[str, bytes] = {}
        generation, size, kind = 0, 0, None
        if snapshot is not None:
            try:
                with open(self.path, "rb") as fh:
                    raw = fh.read()
            except OSError as exc:
                raise StoreCorrupt(f"data file {self.path} cannot be read ({exc})") from None
            records, generation, kind = snapshot_file.parse(
                raw,
                path=self.path,
                collection=self.collection,
                check=self._check,
                split=keep,
                seal_checked=snapshot == self._sealed,
            )
            self._sealed = snapshot if kind == snapshot_file.SEALED else None
            size = len(raw)
            if self.intern_ids:
                records = {sys.intern(i): raw_record for i, raw_record in records.items()}
        state = _State(
            records=records,
            indexes=Indexes(self.indexes),
            generation=generation,
            snapshot=snapshot,
            snapshot_size=size,
            kind=kind,
            edited=set() if kind == snapshot_file.EDIT else None,
        )
        try:
            self._open_journal(state)
        except BaseException:
            state.close()
            raise
        if not keep:
            state.close()
            return state
        if self._state is not None:
            self._state.close()
        self._state = state
        return state

    def check_new(self, record_id: str, record: Record) -> None:
        """A record about to be written must fit: one that does not is a bug of the code
        writing it, and must never reach the disk where it would stop the store."""
        try:
            self._check(self.path, record_id, record)
        except StoreCorrupt as exc:
            raise ValueError(f"refusing to write {exc}") from None

    def _check(self, path: Path, record_id: str, record: Any) -> None:
        check_record(f"data file {path}", self.shape, record_id, record)

    def _open_journal(self, state: _State) -> None:
        """Attach the journal on disk to `state` (which holds the snapshot) and apply it."""
        try:
            fd = os.open(self._journal_path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            if state.generation > 0:  # every compaction leaves a journal: this one was deleted
                raise StoreCorrupt(
                    f"data file {self.journal_path} is missing: {self.path.name} (generation "
                    f"{state.generation}) does not hold the changes made since it was written"
                ) from None
            return
        state.journal_fd, state.journal_ino = fd, os.fstat(fd).st_ino
        header, state.offset = journal_file.read_header(fd, self.journal_path)
        header = header["generation"]
        if header < state.generation:
            state.stale_journal = True  # compacted into the snapshot before a crash
            state.offset = state.seen_size = os.fstat(fd).st_size
            return
        if header > state.generation:
            raise StoreCorrupt(
                f"data file {self.journal_path} continues generation {header} but "
                f"{self.path.name} is generation {state.generation} (was the snapshot replaced "
                "by an older copy?)"
            )
        self._apply_new_lines(state)

    def _apply_new_lines(self, state: _State) -> None:
        """Apply the complete lines after `state.offset` of the journal `state` holds open."""
        assert state.journal_fd is not None
        size = os.fstat(state.journal_fd).st_size
        if size > state.offset:
            for line in journal_file.complete_lines(state.journal_fd, state.offset, size):
                self._apply_line(state, line)
                state.offset += len(line) + 1
        state.seen_size = size

    def _apply_line(self, state: _State, line: bytes) -> None:
        puts, deletes, was = journal_file.parse_change(line, self.journal_path, state.offset)
        for record_id, record in puts.items():
            self._check(self.journal_path, record_id, record)
        if state.edited is not None:
            self._check_edit(state, [*puts, *deletes], was)
        self._commit(state, {i: encode(r) for i, r in puts.items()}, deletes)

    def _check_edit(self, state: _State, changed: list[str], was: dict[str, Any]) -> None:
        """Below a snapshot edited by hand, the first change the journal holds of each record
        must start from the record that snapshot holds (its `was` digest, `journal.py`): if
        not, the operator edited a record the journal also changed, and applying the change
        would silently undo the edit. Refused instead, naming both files and the record.
        Later changes of a record start from the earlier ones: only the first is compared."""
        assert state.edited is not None
        for record_id in changed:
            if record_id in state.edited:
                continue
            state.edited.add(record_id)
            if record_id not in was:
                continue  # written without a digest (key use, an earlier version): as it is
            raw = state.records.get(record_id)
            if was[record_id] != (None if raw is None else journal_file.digest(raw)):
                raise StoreCorrupt(
                    f"data file {self.path}: record {record_id!r} was edited by hand, but "
                    f"{self.journal_path} changed it too (the line at byte {state.offset}) "
                    "and would silently undo the edit: put the record back as it was, fold "
                    "the journal into the snapshot (a clean stop of the server does, as does "
                    "`storage compact`), then edit it again"
                )

    def _commit(self, state: _State, puts: dict[str, bytes], deletes: Iterable[str]) -> None:
        """Apply a change to the in-memory records and the indexes built so far."""
        state.indexes.apply(state.records, puts, deletes)

    def _catch_up(self, state: _State) -> None:
        """Bring `state` to what is on disk, reading only what changed when it can."""
        journal = _stamp(self._journal_path)
        snapshot = _stamp(self._snapshot_path)
        if state.journal_fd is not None and not state.stale_journal:
            # First whatever was appended to the journal this process holds open, even if the
            # file was since compacted away, deleted or broken beside: a disable or revocation
            # committed before the trouble is then honoured whatever comes next.
            try:
                self._apply_new_lines(state)
            except StoreCorrupt:
                if journal is not None and journal[0] == state.journal_ino:
                    raise
                # A bad line in a journal the operator has since replaced: their repair rules.
        gone = (state.snapshot is not None and snapshot is None) or (
            journal is None
            and state.journal_ino is not None
            and not state.stale_journal
            and snapshot == state.snapshot  # a new snapshot without journal: a repair by hand
        )
        if gone:
            # Serving what is left would silently undo every change the vanished file held:
            # revocations included. The last good copy serves; writes wait for the operator.
            name = self.path.name if snapshot is None else self.journal_path.name
            raise StoreCorrupt(f"data file {name} has disappeared from {self.path.parent}")
        if snapshot != state.snapshot:
            if not self._follow_compaction(state, journal):
                self._load()
            return
        if journal is None:
            return
        if journal[0] == state.journal_ino:
            if not state.stale_journal:
                self._apply_new_lines(state)
            return
        # A new journal beside the same snapshot: a writer replaced a stale one, or made the
        # first one of a store that had none.
        state.close()
        state.stale_journal = False
        self._open_journal(state)

    def _follow_compaction(self, state: _State, journal: tuple[int, int, int] | None) -> bool:
        """After another process compacted: finish the old journal through the descriptor still
        open, then go on with the new one. False when that is not what happened."""
        if journal is None or journal[0] == state.journal_ino or state.stale_journal:
            return False
        try:
            fd = os.open(self._journal_path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return False
        try:
            header, offset = journal_file.read_header(fd, self.journal_path)
        except StoreCorrupt:
            os.close(fd)
            raise
        snapshot = _stamp(self._snapshot_path)
        folded_from = header.get("from")  # absent before this was written: taken on trust
        if (
            header["generation"] != state.generation + 1
            or header.get("snapshot") != (list(snapshot) if snapshot else None)
            or (folded_from is not None and folded_from != list(state.snapshot or ()))
            or state.journal_fd is None
        ):
            # Not (only) a compaction of what this state holds: a hand edit (perhaps folded
            # by the compaction), or more than one compaction.
            os.close(fd)
            return False
        if state.journal_fd is not None:
            self._apply_new_lines(state)
            state.close()
        state.journal_fd, state.journal_ino, state.offset = fd, os.fstat(fd).st_ino, offset
        state.generation = header["generation"]
        state.snapshot = snapshot
        state.snapshot_size = snapshot[2] if snapshot else 0
        state.kind, state.edited = snapshot_file.SEALED, None
        self._apply_new_lines(state)
        return True

    # -- writing ---------------------------------------------------------------------------

    def update(self, change: Callable[[Transaction], R], *, timeout: float | None = None) -> R:
        """Apply `change` to the records under the file lock and commit what it changed.

        `change` gets a `Transaction` (put, assign, delete, or modify what it read) and
        returns a value that `update` passes back. If it raises, or returns `UNCHANGED`,
        nothing is written. Raises StorageBusy when the lock cannot be had in time or a file
        on disk is unreadable.
        """
        with self._locked(timeout):
            with self._mutex:
                state = self._fresh_for_write()
                records = StagedRecords(state.records, state.indexes, check=self.check_new)
                result = change(records)
                if result is UNCHANGED:
                    return result
                puts, deletes = records.changes()
                if puts or deletes:
                    end = self._append(state, puts, deletes)
                    self._commit(state, puts, deletes)
                    state.offset = state.seen_size = end  # after the records: see `_append`
                due = self._compaction_wanted(state)
        if due and not self.maintained:
            self._compact_quietly()
        return result

    @contextmanager
    def _locked(self, timeout: float | None) -> Iterator[None]:
        """The store's file lock for one write, its timeout mapped to 503 STORAGE_BUSY and a
        write the disk refuses to 503 STORAGE_UNAVAILABLE; the change counter is bumped before
        it is let go."""
        try:
            secure_dir(self.path.parent)  # else the lock file would bring it back as 0755
            lock = self._file_lock()
            try:
                lock.acquire(timeout=self.lock_timeout if timeout is None else timeout)
            except Timeout:
                raise StorageBusy(
                    f"data file {self.path.name} is locked by another writer; try again",
                    headers={"Retry-After": "1"},
                ) from None
            try:
                yield
            finally:
                self.changes.bump()  # whoever held the lock may have changed the files
                lock.release()
        except OSError as exc:
            if exc.errno not in REFUSED_WRITES:
                raise
            raise StorageUnavailable(
                f"data file {self.path.name} cannot be written ({exc.strerror}); nothing was "
                "changed: try again once the server's disk has room",
                headers={"Retry-After": "30"},
            ) from None

    def _file_lock(self) -> FileLock:
        # A lock object must not cross a fork (gunicorn --preload): one per process.
        pid = os.getpid()
        lock = self._locks.get(pid)
        if lock is None:
            lock = self._locks[pid] = FileLock(str(self.lock_path), mode=0o600)
        return lock

    def _fresh_for_write(self) -> _State:
        """The state caught up with disk, under the lock; StorageBusy if anything is broken."""
        try:
            if self._state is None:
                state = self._load()
            else:
                state = self._state
                if not self._unchanged(state, full=True) or state.broken:
                    self._catch_up(state)
                    state = self._state
                    state.broken = None
        except StoreCorrupt as exc:
            log.error("%s; refusing to write over it", exc)
            raise StorageBusy(
                f"data file {self.path.name} is unreadable; changes are refused until an "
                "operator repairs it"
            ) from None
        assert state is not None
        return state

    def put_unread(self, puts: Mapping[str, Record]) -> None:
        """Write `puts` without reading the store first (the last write wins): for bookkeeping
        written far more often than it is read (when keys were used). A process that has not
        loaded the store does not load it for this (unless the snapshot's first line is not a
        sealed one): it appends after the journal's last complete line and closes it again."""
        encoded = {}
        for record_id, record in puts.items():
            self.check_new(record_id, record)
            encoded[record_id] = encode(record)
        with self._locked(None):
            with self._mutex:
                tail = self._tail() if self._state is None else None
                state = tail or self._fresh_for_write()
                try:
                    end = self._append(state, encoded, [], read=tail is None)
                finally:
                    if tail is not None:
                        tail.close()
                if tail is None:
                    self._commit(state, encoded, [])
                state.offset = state.seen_size = end  # after the records: see `_append`
                due = self._compaction_wanted(state)
        if due and not self.maintained:
            self._compact_quietly()

    def _tail(self) -> _State | None:
        """A state without records that knows where the journal's complete lines end: enough
        to append. None when the snapshot's generation needs a full read."""
        generation = snapshot_file.sealed_generation(self._snapshot_path)
        if generation is None:
            return None
        snapshot = _stamp(self._snapshot_path)
        state = _State(
            records={},
            indexes=Indexes({}),
            generation=generation,
            snapshot=snapshot,
            snapshot_size=snapshot[2] if snapshot else 0,
        )
        try:
            fd = os.open(self._journal_path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return state  # `_append` starts a journal
        state.journal_fd = fd
        try:
            header, _ = journal_file.read_header(fd, self.journal_path)
        except StoreCorrupt as exc:
            state.close()
            log.error("%s; refusing to write over it", exc)
            raise StorageBusy(f"data file {self.journal_path.name} is unreadable") from None
        if header["generation"] != generation:
            state.stale_journal = True  # older: compacted before a crash; newer: `_append` refuses
            if header["generation"] > generation:
                state.close()
                raise StorageBusy(f"data file {self.journal_path.name} does not fit its snapshot")
        state.offset = state.seen_size = journal_file.end_of_last_line(fd)
        return state

    def _append(
        self, state: _State, puts: dict[str, bytes], deletes: list[str], *, read: bool = True
    ) -> int:
        """Append one change to the journal and fdatasync it (making the journal if needed);
        returns the journal's new end. `read`: `state` holds the records, so the line notes
        what each one was before. The caller moves `state.offset` there once the records hold
        the change: the offset is part of `version()`, and a reader (another thread) that saw
        the new version beside the old records would keep what it built from them."""
        if state.journal_fd is None or state.stale_journal:
            self._new_journal(state)
        assert state.journal_fd is not None
        fd = state.journal_fd
        if os.fstat(fd).st_size != state.offset:
            os.ftruncate(fd, state.offset)  # a torn line of a writer that died mid-append
        was = _digests(state.records, [*puts, *deletes]) if read else None
        line = journal_file.change_line(puts, deletes, was)
        try:
            with timed_write(self.name):
                if os.write(fd, line) != len(line):  # a short write: the disk is full
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fdatasync(fd)
        except OSError:
            os.ftruncate(fd, state.offset)  # no part of a refused change stays behind
            raise
        return state.offset + len(line)

    def _new_journal(self, state: _State) -> None:
        """Start an empty journal of the state's generation (atomically, header included)."""
        header = journal_file.header_line(state.generation)
        os.replace(self._write_temp(self.journal_path, [header]), self.journal_path)
        fsync_dir(self.path.parent)
        self._attach_journal(state)

    def _attach_journal(self, state: _State) -> None:
        """Point `state` at the end of the journal file just written (under the lock)."""
        state.close()
        state.journal_fd = os.open(self._journal_path, os.O_RDWR | os.O_APPEND)
        st = os.fstat(state.journal_fd)
        state.journal_ino, state.offset, state.seen_size = st.st_ino, st.st_size, st.st_size
        state.stale_journal = False

    @staticmethod
    def _write_temp(path: Path, chunks: Iterable[bytes]) -> str:
        """A fsynced temp file (0600) beside `path` holding `chunks`; returns its name."""
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def copy_to(self, directory: Path) -> list[str]:
        """Copy this store's files into `directory` as one consistent version (under the lock,
        so no change lands between the snapshot and the journal); returns the names copied."""
        copied = []
        with self._locked(None):
            for source in (self.path, self.journal_path):
                if source.exists():
                    target = directory / source.name
                    shutil.copyfile(source, target)
                    os.chmod(target, 0o600)
                    copied.append(source.name)
        return copied

    # -- compaction ------------------------------------------------------------------------

    def _compaction_wanted(self, state: _State) -> bool:
        if self._compaction_due:
            return False
        if state.offset <= max(self.compact_floor, state.snapshot_size // 2):
            return False
        self._compaction_due = True
        return True

    def _compact_quietly(self) -> None:
        try:
            self.compact()
        except (StorageBusy, StorageUnavailable, OSError) as exc:
            log.warning("could not compact %s: %s", self.journal_path.name, exc)
        finally:
            self._compaction_due = False

    def maintain(self) -> None:
        """Compact the journal if a write found it too long (see `maintained`)."""
        if self._compaction_due:
            self._compact_quietly()

    def fold(self) -> bool:
        """Compact if the journal holds any change, so that the snapshot alone holds every
        record (a clean stop, `storage compact`); True if it did. Safe beside other processes
        at work: decided and done under the file lock, so of several processes stopping
        together the first folds and the others find nothing to do."""
        with self._locked(None):
            if not self._journal_has_changes():
                return False
            self.compact()
        return True

    def _journal_has_changes(self) -> bool:
        """Whether the journal holds anything after its first line (a torn line included:
        the compaction drops it)."""
        try:
            fd = os.open(self._journal_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            _, start = journal_file.read_header(fd, self.journal_path)
            return os.fstat(fd).st_size > start
        finally:
            os.close(fd)

    def compact(self) -> None:
        """Fold the journal into a new snapshot of the next generation and start a new journal.

        O(N): the server runs it on a background thread, never on a request. Readers of this
        process are not held up: nothing can change while the file lock is held, so the O(N)
        part runs outside the in-process mutex. A store this process had not loaded is
        dropped from memory again afterwards."""
        with self._locked(None):
            self._remove_dead_temp_files()
            with self._mutex:
                unload = self._state is None
                state = self._fresh_for_write()
                if state.journal_fd is None:
                    # A store without one (new, or the previous version's): a crash between
                    # the two replaces below must leave a stale journal, never none.
                    self._new_journal(state)
                records = dict(state.records)
                generation = state.generation + 1
            chunks = snapshot_file.render(
                records, generation=generation, collection=self.collection
            )
            snapshot = self._write_temp(self.path, chunks)
            stamp = _stamp(snapshot)  # os.replace keeps inode and mtime: how readers know it
            header = journal_file.header_line(generation, stamp, folded_from=state.snapshot)
            journal = self._write_temp(self.journal_path, [header])
            with self._mutex:
                # The snapshot goes first: a crash in between leaves a journal of the previous
                # generation, which the new snapshot already holds whole.
                os.replace(snapshot, self.path)
                os.replace(journal, self.journal_path)
                fsync_dir(self.path.parent)
                state.generation = generation
                state.snapshot = stamp
                state.snapshot_size = sum(map(len, chunks))
                state.kind, state.edited = snapshot_file.SEALED, None
                self._attach_journal(state)
                if unload:
                    state.close()
                    self._state = None


class JsonStorage(Backend):
    """The embedded default backend: each store a snapshot and a journal in `data_dir`, one
    host's worker processes kept in step through the files (see the top of this module)."""

    backend = "json"
    blocking = True  # file locks and fsync: kept off an event loop

    def __init__(
        self,
        data_dir: Path,
        *,
        lock_timeout: float = 10.0,
        maintained: bool = False,
        audit_max_bytes: int = 10 * 1024 * 1024,
        audit_backups: int = 5,
    ):
        super().__init__()
        self.data_dir = secure_dir(Path(data_dir))
        self.lock_timeout = lock_timeout
        self.maintained = maintained
        self.audit = AuditFile(
            self.data_dir / "audit.log",
            max_bytes=audit_max_bytes,
            backups=audit_backups,
            lock_timeout=lock_timeout,
        )

    def _make(self, spec: StoreSpec) -> JsonStore:
        return JsonStore(
            self.data_dir / f"{spec.name}.json",
            collection=spec.collection,
            lock_timeout=self.lock_timeout,
            shape=spec.shape,
            indexes=spec.indexes,
            intern_ids=spec.intern_ids,
            maintained=self.maintained,
        )

    def sync(self) -> None:
        """Nothing to do: each read follows the files by the change counter."""

    def end_request(self) -> None:
        """Nothing to do (see `sync`)."""

    def maintain(self) -> None:
        for store in self.stores():
            store.maintain()

    def shutdown(self) -> list[str]:
        """Fold every journal that holds a change into its snapshot, so that the data dir of a
        stopped server reads as whole JSON documents (and the next start loads sealed
        snapshots only). Tries every store; one it cannot fold (locked past the timeout,
        unreadable, a full disk) keeps its journal, which the next start applies as always,
        and is raised once the others are done. Returns what was folded."""
        folded: list[str] = []
        failed: list[str] = []
        for store in self.stores():
            try:
                if store.fold():
                    folded.append(f"{store.journal_path.name} into {store.path.name}")
            except (StoreCorrupt, StorageBusy, StorageUnavailable, OSError) as exc:
                reason = getattr(exc, "description", None) or str(exc)
                log.warning("could not fold %s: %s", store.journal_path.name, reason)
                failed.append(f"{store.journal_path.name} ({reason})")
        if failed:
            done = f"; folded {', '.join(folded)}" if folded else ""
            raise StorageBusy(f"could not fold {', '.join(failed)}{done}")
        return folded

    def backup(self, target: Path) -> list[str]:
        """Copy every store's files into `target`, each as one consistent version."""
        return [name for store in self.stores() for name in store.copy_to(target)]

    def describe(self) -> str:
        return f"JSON files in {self.data_dir}"

    def secret_place(self) -> str:
        return str(self.data_dir / SECRET_FILE)

    def kept_secret(self, make: Callable[[], str] | None = None) -> str | None:
        """The secret in `SECRET_FILE` (0600); made with `make` when there is none. Written to
        a temp file, then linked into place: a link never replaces a file, so of several
        processes starting at once one secret wins and nobody reads a partial one."""
        path = self.data_dir / SECRET_FILE
        if not path.exists() and make is not None:
            tmp = self._write_secret_temp(make())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return None

    def replace_secret(self, secret: str) -> None:
        os.replace(self._write_secret_temp(secret), self.data_dir / SECRET_FILE)
        fsync_dir(self.data_dir)

    def _write_secret_temp(self, secret: str) -> str:
        return JsonStore._write_temp(self.data_dir / SECRET_FILE, [secret.encode()])
