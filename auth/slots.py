"""Slots shared by the worker processes of one host: N lock files, one per slot.

Something that may run at most N times at once across every worker (password hashes, a key's
predictions in flight) takes a free slot: it tries each of N lock files without waiting and
holds the first it gets. The operating system releases a lock when its holder's file closes,
so a slot held by a worker that dies (SIGKILL, OOM) is free again at once, with no lease to run
out and nothing to clean up.

A `flock` belongs to an open file, not to a thread or greenlet: two requests of one worker
locking through the same open file would both "hold" it. So a process notes which slots it
holds itself (`_held`, claimed atomically before the lock is tried) and the lock only decides
between processes. Each process tries the slots from a place of its own (chosen at random, again
in a forked child), so workers busy at once hold different files instead of each trying the
others' first: a lock held elsewhere costs a refused `flock` and its exception, and two workers
locking one file contend in the kernel.

Each process keeps the files of the slots it used open (up to `KEEP_OPEN`; beyond that a take
opens its own file and closes it on release), so a take is one `flock` call and a release
another, not an open, a lock and a close. A child forked from a process that kept files open
closes its copies at once (`os.register_at_fork`): through a shared open file it would hold its
parent's locks, and keep them held after its parent died.

This is `flock` itself, not filelock: a slot is taken on the prediction path, where filelock's
bookkeeping (fork tracking, re-entrancy counts, polling) cost about 115 us a take against 7 us
for the system calls it wraps; a slot needs none of that (never waited for, never re-entered,
never a data file). The data files stay behind filelock.
"""

from __future__ import annotations

import fcntl
import functools
import os
import random
import weakref
from pathlib import Path

from .forks import this_pid

OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
# Slot files one `Slots` keeps open: descriptors are shared with a worker's connections
# (gunicorn's worker_connections, under a soft limit often of 1024).
KEEP_OPEN = 64


class Slot:
    """A slot held: its lock file, locked until `release`."""

    def __init__(self, slots: Slots, path: str, fd: int) -> None:
        self._slots = slots
        self._path: str | None = path
        self._fd = fd
        self._pid = this_pid()

    def release(self) -> None:
        path, self._path = self._path, None
        if path is not None and self._pid == this_pid():  # a forked child's copy is not held
            self._slots._let_go(path, self._fd)


class Slots:
    """The slots of one lock directory, as this process takes them."""

    def __init__(self, lock_dir: Path) -> None:
        self._prefix = os.path.join(lock_dir, "")  # text: a Path join costs more than the lock
        self._open: dict[str, int] = {}  # slot file -> its descriptor, kept open
        self._held: dict[str, object] = {}  # slot files this process holds
        self._closed = False
        self._start = random.randrange(1 << 30)  # where this process tries slots from
        os.register_at_fork(after_in_child=functools.partial(_forget_in_child, weakref.ref(self)))

    def take(self, name: str, count: int) -> Slot | None:
        """One of the `count` slots called `name`, held (release it when done), or None if all
        are taken."""
        start = self._start
        for n in range(count):
            path = f"{self._prefix}{name}-{(start + n) % count}.lock"
            claim = object()
            if self._held.setdefault(path, claim) is not claim:  # held in this process
                continue
            try:
                slot = self._lock(path)
            except BaseException:
                del self._held[path]
                raise
            if slot is not None:
                return slot
            del self._held[path]
        return None

    def close(self) -> None:
        """Close the kept files, each held one as it is released, and keep no more. For a
        process that goes on without this state, once nothing takes a slot: a file system may
        not be unmounted while a file on it is open."""
        self._closed = True
        for path in list(self._open):
            if path not in self._held:
                os.close(self._open.pop(path))

    def _lock(self, path: str) -> Slot | None:
        """`path` locked without waiting (None if another process holds it); this process has
        claimed it in `_held`."""
        fd = self._open.get(path)
        if fd is None:
            fd = os.open(path, OPEN_FLAGS, 0o600)
            if len(self._open) < KEEP_OPEN and not self._closed:
                self._open[path] = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException as exc:
            if fd != self._open.get(path):
                os.close(fd)
            if isinstance(exc, BlockingIOError):
                return None
            raise
        return Slot(self, path, fd)

    def _let_go(self, path: str, fd: int) -> None:
        try:
            if fd == self._open.get(path) and not self._closed:
                fcntl.flock(fd, fcntl.LOCK_UN)  # kept open for the next take
            else:
                self._open.pop(path, None)
                os.close(fd)  # closing the file lets go of its lock
        finally:
            self._held.pop(path, None)

    def _forget(self) -> None:
        self._start = random.randrange(1 << 30)
        opened, self._open, self._held = self._open, {}, {}
        for fd in opened.values():
            os.close(fd)  # this copy only: the parent's locks stay the parent's


def _forget_in_child(ref: weakref.ref[Slots]) -> None:
    slots = ref()
    if slots is not None:
        slots._forget()
