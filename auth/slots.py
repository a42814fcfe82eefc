"""Slots shared by the worker processes of one host: N lock files, one per slot.

Something that may run at most N times at once across every worker (password hashes, a key's
predictions in flight) takes a free slot: it tries each of N lock files without waiting and
holds the first it gets. The operating system releases a lock when its holder's file closes,
so a slot held by a worker that dies (SIGKILL, OOM) is free again at once, with no lease to run
out and nothing to clean up.

Each take opens its own lock (not shared between threads or greenlets), so two requests of one
worker compete for a slot exactly as two workers do.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout


class Slots:
    def __init__(self, lock_dir: Path) -> None:
        self._dir = lock_dir

    def take(self, name: str, count: int) -> FileLock | None:
        """A held lock on one of the `count` slots called `name` (release it when done), or
        None if all are taken."""
        for i in range(count):
            lock = FileLock(self._dir / f"{name}-{i}.lock", mode=0o600, thread_local=False)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            return lock
        return None
