"""A store's change counter: one number in shared memory, bumped under the store's file lock.

A read must see every change another worker committed. A `stat` of the journal on every read
would see it, but that is a syscall per store per request (2 µs alone, 20 µs on a busy worker,
when profiled). Instead each store keeps `<name>.json.changes`: eight bytes that every process
maps into its memory (`mmap`, shared). Every holder of the store's file lock adds one just
before letting go of it, after its change (if it made one) is on disk; a reader compares the
number with the one it saw when it last caught up with the files, a memory read and no syscall,
and looks at the files only when it moved.

The counter is a hint, never the data: a process that could not map it (`read` then answers a
new number every time) looks at the files on every read, and a store still looks at its files
`RECHECK_SECONDS` (`store.py`) after its last look, for changes made by hand or by a process
that maps a counter file an operator has since replaced (`replaced`, which a read asks
whenever it looks at the files).
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
from pathlib import Path

log = logging.getLogger(__name__)

WIDTH = 8
_WRAP = (1 << 64) - 1


class ChangeCounter:
    """The counter in `path`, mapped on first use by the process that uses it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._view: memoryview | None = None
        self._mapped: mmap.mmap | None = None
        self._inode: int | None = None
        self._unmappable = False
        self._unmapped = itertools.count(1 << 64)  # what `read` answers when not mapped: new

    def read(self) -> int:
        view = self._view
        if view is None:
            view = self._map()
            if view is None:
                return next(self._unmapped)
        return view[0]

    def bump(self) -> None:
        """Count a change, or a possible one (the caller still holds the store's file lock: no
        two bumps race)."""
        view = self._view or self._map()
        if view is not None:
            view[0] = (view[0] + 1) & _WRAP

    def replaced(self) -> bool:
        """True when the file is no longer the one mapped (deleted or replaced by hand): the
        next `read` maps the file that is there now."""
        if _inode(self.path) == self._inode:
            return False
        # Dropped, not closed: a reader on another thread may hold the view; the mapping goes
        # when the last one lets go.
        self._view = self._mapped = None
        self._unmappable = False
        return True

    def close(self) -> None:
        """Let go of the mapping (the next `read` maps the file again)."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._mapped is not None:
            self._mapped.close()
            self._mapped = None
        self._unmappable = False

    def _map(self) -> memoryview | None:
        if self._unmappable:
            return None
        self._unmappable = True  # until it worked: warn once, not on every read
        self._inode = _inode(self.path)  # what `replaced` compares with, mapped or not
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("cannot open %s (%s): following the files by stat", self.path.name, exc)
            return None
        try:
            st = os.fstat(fd)
            if st.st_size < WIDTH:
                os.ftruncate(fd, WIDTH)  # two processes may both do this: same size, same zeros
            self._mapped = mmap.mmap(fd, WIDTH)
            self._view = memoryview(self._mapped).cast("Q")
            self._inode = st.st_ino
            self._unmappable = False
        except (OSError, ValueError) as exc:
            log.warning("cannot map %s (%s): following the files by stat", self.path.name, exc)
            return None
        finally:
            os.close(fd)
        return self._view


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
