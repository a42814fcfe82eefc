"""The JSON backend's audit trail: one JSON object per line in `data/audit.log`, appended,
rotated by size.

A line is whole or absent, as a journal line of the stores is. Every append holds the lock file
`audit.log.lock` (several worker processes append to one file): under it the writer cuts a torn
tail (a last line without its newline, left by a writer that died mid-append) back to the end of
the last whole line, writes its line with a single `write` on a file opened with O_APPEND, and
when that write is short or fails (a full disk) cuts the file back to where it was. Without the
lock a writer could cut the line another process had just appended. Per line that is a `flock`,
an `fstat` and a one-byte `pread` more than a bare append; the audit records account changes
and logins, never predictions. A line that cannot be written goes to the server log instead.

When the file passes `max_bytes` the writer that notices rotates it (audit.log -> audit.log.1
-> ... -> audit.log.N, the oldest dropped) under the same lock, so two processes never rotate
the same generation twice. (`logging.handlers.RotatingFileHandler` is not safe across
processes, which is why this is done by hand.)
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger("auth.audit")  # where an operator looks for audit trouble


class AuditFile:
    """The audit trail of the JSON backend: `audit.log` in the data dir (see the top)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        lock_timeout: float = 10.0,
    ) -> None:
        self.path = path
        self.name = path.name
        self.max_bytes = max_bytes
        self.backups = backups
        self.lock_timeout = lock_timeout
        self._lock_path = str(path) + ".lock"
        self._locks: dict[int, FileLock] = {}

    def append(self, entry: dict[str, Any]) -> None:
        """Append `entry` as one line, whole or not at all; OSError or Timeout when the line
        could not be written."""
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        with self._lock():
            self._append(line)

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every event, oldest first (lines cut by a crash are skipped)."""
        for line in _lines(self.path):
            try:
                yield json.loads(line)
            except ValueError:
                continue

    def copy_to(self, directory: Path) -> list[str]:
        """Copy the log and its rotated generations into `directory` (under the lock, so no
        line is half copied and no rotation moves a file mid-copy); returns the names copied."""
        copied = []
        with self._lock():
            for source in self.files():
                shutil.copyfile(source, directory / source.name)
                os.chmod(directory / source.name, 0o600)
                copied.append(source.name)
        return copied

    def files(self) -> list[Path]:
        """The log's files, oldest first: the rotated generations, then the log itself."""
        return [*_generations(self.path), *([self.path] if self.path.exists() else [])]

    def _lock(self) -> FileLock:
        # A lock object must not cross a fork (gunicorn --preload): one per process. Threads
        # of one process exclude each other too (FileLock is thread-local by default).
        pid = os.getpid()
        lock = self._locks.get(pid)
        if lock is None:
            lock = self._locks[pid] = FileLock(
                self._lock_path, mode=0o600, timeout=self.lock_timeout
            )
        return lock

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)  # read: its tail

    def _append(self, line: bytes) -> None:
        """Append `line` whole or not at all; the caller holds the lock."""
        fd = self._open()
        try:
            end = self._cut_torn_tail(fd)
            if end >= self.max_bytes:
                self._rotate()  # `fd` goes on naming the old file, now audit.log.1
                os.close(fd)
                fd = -1
                fd = self._open()
                end = self._cut_torn_tail(fd)
            try:
                written = os.write(fd, line)
            except OSError:
                os.ftruncate(fd, end)  # a failed write may still have left part of the line
                raise
            if written != len(line):  # a short write: the disk is full
                os.ftruncate(fd, end)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        finally:
            if fd >= 0:
                os.close(fd)

    def _cut_torn_tail(self, fd: int) -> int:
        """Cut what follows the last complete line of the file open as `fd`; returns its size."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        end = size
        while end > 0:
            start = max(0, end - 65536)
            newline = os.pread(fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        log.warning("cut a torn line (%d bytes) from the end of %s", size - end, self.path.name)
        os.ftruncate(fd, end)
        return end

    def _rotate(self) -> None:
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()


def _generations(path: Path) -> list[Path]:
    """The rotated generations of the log at `path`, oldest first."""
    return sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )


def _lines(path: Path) -> Iterator[str]:
    """Lines of the log and its rotated generations, oldest first."""
    for file in [*_generations(path), path]:
        try:
            with open(file, encoding="utf-8") as fh:
                yield from fh
        except FileNotFoundError:
            continue
