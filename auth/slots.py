"""Slots shared by the worker processes of one host: N lock files, one per slot.

Something that may run at most N times at once across every worker (password hashes, a key's
predictions in flight) takes a free slot: it tries each of N lock files without waiting and
holds the first it gets. The operating system releases a lock when its holder's file closes,
so a slot held by a worker that dies (SIGKILL, OOM) is free again at once, with no lease to run
out and nothing to clean up.

Each take opens its own file (a `flock` belongs to one open file, not to a thread or greenlet),
so two requests of one worker compete for a slot exactly as two workers do.

This is `flock` itself, not filelock: a slot is taken on the prediction path, where filelock's
bookkeeping (fork tracking, re-entrancy counts, polling) cost about 115 us a take against 7 us
for the system calls it wraps; a slot needs none of that (never waited for, never re-entered,
never a data file). The data files stay behind filelock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC


class Slot:
    """A slot held: its lock file, open and locked until `release`."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file lets go of its lock


class Slots:
    def __init__(self, lock_dir: Path) -> None:
        self._prefix = os.path.join(lock_dir, "")  # text: a Path join costs more than the lock

    def take(self, name: str, count: int) -> Slot | None:
        """One of the `count` slots called `name`, held (release it when done), or None if all
        are taken."""
        for i in range(count):
            fd = os.open(f"{self._prefix}{name}-{i}.lock", OPEN_FLAGS, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return Slot(fd)
        return None
