"""The audit log: one JSON object per line in `data/audit.log`, appended, rotated by size.

Callers pass facts (event name, user ids, names, outcomes), never secrets; the request id and the
client address are added here so every line can be tied to an HTTP exchange. Lines are written
with a single `write` on a file opened with O_APPEND, so lines from several worker processes
interleave whole. When the file passes `max_bytes` the writer that notices rotates it
(audit.log -> audit.log.1 -> ... -> audit.log.N, the oldest dropped) under a lock file, so two
processes never rotate the same generation twice. (`logging.handlers.RotatingFileHandler` is not
safe across processes, which is why this is done by hand.)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock
from flask import has_request_context

from .errors import request_id
from .limits import client_address

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: Path, *, max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock_path = str(path) + ".lock"

    def record(self, event: str, **fields: Any) -> None:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": event,
        }
        if has_request_context():
            entry["request_id"] = request_id()
            entry["ip"] = client_address()
        entry.update(fields)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        try:
            self._rotate_if_full()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            # The change it records is committed already: failing the request now would tell
            # the client it did not happen. The event goes to the server log instead.
            log.error("could not write %s (%s): %s", self.path.name, exc.strerror, event)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _rotate_if_full(self) -> None:
        if self._size() < self.max_bytes:
            return
        with FileLock(self._lock_path, mode=0o600, timeout=10):
            if self._size() < self.max_bytes:  # another process rotated first
                return
            for n in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
            if self.backups:
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            else:
                self.path.unlink()


def _lines(path: Path) -> Iterator[str]:
    """Lines of the log and its rotated generations, oldest first."""
    generations = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    for file in [*generations, path]:
        try:
            with open(file, encoding="utf-8") as fh:
                yield from fh
        except FileNotFoundError:
            continue


def read_events(
    path: Path, *, count: int, user: Collection[str] = (), event: str | None = None
) -> list[dict[str, Any]]:
    """The last `count` events, optionally only those about or by a user (any of the ids and
    names in `user`) or of kind `event`."""
    found: deque[dict[str, Any]] = deque(maxlen=count)
    for line in _lines(path):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash: skip it, keep reading
        if event and entry.get("event") != event:
            continue
        if user and not {entry.get("user_id"), entry.get("actor"), entry.get("username")} & set(
            user
        ):
            continue
        found.append(entry)
    return list(found)
