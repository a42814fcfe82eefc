"""The audit trail: who did what to which account, key or model, and when.

Callers pass facts (event name, user ids, names, outcomes), never secrets; the request id and the
client address are added here so every event can be tied to an HTTP exchange. The storage
backend keeps the events (`Storage.audit`: `audit.log` in the data dir, or a capped stream in
Redis). The change an event records is committed already when it is written: failing the request
then would tell the client it did not happen, so an event that cannot be kept goes to the server
log instead.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Collection
from typing import Any

from filelock import Timeout
from flask import has_request_context

from .errors import request_id
from .limits import client_address
from .storage import AuditTrail

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    def record(self, event: str, **fields: Any) -> None:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": event,
        }
        if has_request_context():
            entry["request_id"] = request_id()
            entry["ip"] = client_address()
        entry.update(fields)
        try:
            self.trail.append(entry)
        except Timeout:
            log.error("could not write %s (locked by another writer): %s", self.trail.name, event)
        except OSError as exc:
            log.error("could not write %s (%s): %s", self.trail.name, exc.strerror, event)

    def read(
        self, *, count: int, user: Collection[str] = (), event: str | None = None
    ) -> list[dict[str, Any]]:
        """The last `count` events, optionally only those about or by a user (any of the ids
        and names in `user`) or of kind `event`."""
        return read_events(self.trail, count=count, user=user, event=event)


def read_events(
    trail: AuditTrail, *, count: int, user: Collection[str] = (), event: str | None = None
) -> list[dict[str, Any]]:
    """The last `count` events of `trail` of kind `event` and about or by `user`, if given."""
    found: deque[dict[str, Any]] = deque(maxlen=count)
    wanted = set(user)
    for entry in trail.entries():
        if event and entry.get("event") != event:
            continue
        if (
            wanted
            and not {entry.get("user_id"), entry.get("actor"), entry.get("username")} & wanted
        ):
            continue
        found.append(entry)
    return list(found)
